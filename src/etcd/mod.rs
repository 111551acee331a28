//! Growing a stacked etcd safely (contract 7): before membership changes, a quorum of the
//! voting members must answer and their peer ports must be reachable from this node; the new
//! member joins as a learner (which never counts toward quorum), is promoted only once the
//! leader says it is in sync, and when it never starts or never catches up it is removed again,
//! so the cluster is exactly as healthy as before.

use std::time::{Duration, Instant};

pub mod snapshot;

use anyhow::{anyhow, bail, Result};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, MemberAddOptions, TlsOptions};

/// The client credentials (PEM): the etcd CA and a client certificate it signed.
pub struct Tls {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl Tls {
    /// The healthcheck-client identity under `etcd_pki` (certificatesDir/etcd), as kubeadm uses
    /// it for membership calls.
    pub fn healthcheck_client(etcd_pki: &std::path::Path) -> Result<Tls> {
        let read = |f: &str| {
            std::fs::read(etcd_pki.join(f))
                .map_err(|e| anyhow!("{}: {e}", etcd_pki.join(f).display()))
        };
        Ok(Tls {
            ca: read("ca.crt")?,
            cert: read("healthcheck-client.crt")?,
            key: read("healthcheck-client.key")?,
        })
    }
}

async fn connect(endpoints: &[String], tls: &Tls) -> Result<Client> {
    let options = ConnectOptions::new()
        .with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(&tls.ca))
                .identity(Identity::from_pem(&tls.cert, &tls.key)),
        )
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    Client::connect(endpoints, Some(options))
        .await
        .map_err(|e| anyhow!("connecting to etcd at {}: {e}", endpoints.join(", ")))
}

/// A client on those of `endpoints` that answer now: one member down must not fail every call.
async fn connect_live(endpoints: &[String], tls: &Tls) -> Result<Client> {
    let mut live = Vec::new();
    for e in endpoints {
        if answers(e, tls).await {
            live.push(e.clone());
        }
    }
    if live.is_empty() {
        bail!(
            "no etcd member answers at {}: the cluster has no quorum to join",
            endpoints.join(", ")
        );
    }
    connect(&live, tls).await
}

/// Whether the member serving `url` answers a status request.
async fn answers(url: &str, tls: &Tls) -> bool {
    let attempt = async {
        let mut c = connect(&[url.to_string()], tls).await?;
        c.status().await?;
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .is_ok_and(|r| r.is_ok())
}

fn host_port(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    Some(rest.split('/').next()?.to_string())
}

/// The etcd members' client URLs, from the etcd mirror pods' kubeadm annotation. Like kubeadm,
/// it asks again until `limit`: right after `kubeadm init` the etcd mirror pod can be missing for
/// a minute and more (the kubelet's first attempt is refused before the system-node-critical
/// PriorityClass exists, and it retries at its next resync).
pub async fn endpoints_from_pods(client: &kube::Client, limit: Duration) -> Result<Vec<String>> {
    use k8s_openapi::api::core::v1::Pod;
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), "kube-system");
    let start = Instant::now();
    loop {
        let list = pods
            .list(&kube::api::ListParams::default().labels("component=etcd,tier=control-plane"))
            .await?;
        let endpoints: Vec<String> = list
            .items
            .iter()
            .filter_map(|p| {
                p.metadata
                    .annotations
                    .as_ref()?
                    .get("kubeadm.kubernetes.io/etcd.advertise-client-urls")
                    .cloned()
            })
            .collect();
        if !endpoints.is_empty() {
            return Ok(endpoints);
        }
        tracing::info!(
            "none of the {} etcd pods carries the advertise-client-urls annotation yet; asking again",
            list.items.len()
        );
        if start.elapsed() > limit {
            bail!("no etcd pod in kube-system carried the kubeadm.kubernetes.io/etcd.advertise-client-urls annotation within {limit:?}: is etcd stacked on the control-plane nodes?");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What `add_learner` did.
pub struct Added {
    pub id: u64,
    /// `--initial-cluster` for this node's etcd: every member, unnamed ones by hex ID.
    pub initial_cluster: String,
    /// This node's peer URL is a voting member already (a re-run): nothing to promote.
    pub voting: bool,
}

/// `--initial-cluster` for a new member: every member by name (unnamed ones, which have not
/// started yet, by hex ID), member `ours` named `name`.
fn initial_cluster(members: &[etcd_client::Member], ours: u64, name: &str) -> String {
    members
        .iter()
        .filter_map(|m| {
            let url = m.peer_urls().first()?;
            let n = if m.id() == ours {
                name.to_string()
            } else if m.name().is_empty() {
                format!("{:x}", m.id())
            } else {
                m.name().to_string()
            };
            Some(format!("{n}={url}"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `name (peer URL)` of a member, for messages.
fn describe(m: &etcd_client::Member) -> String {
    let name = if m.name().is_empty() {
        "unnamed"
    } else {
        m.name()
    };
    format!(
        "{name} ({})",
        m.peer_urls().first().map_or("", String::as_str)
    )
}

/// The voting members that answer; an error unless they are a quorum.
async fn healthy_quorum<'m>(
    voting: &[&'m etcd_client::Member],
    tls: &Tls,
) -> Result<Vec<&'m etcd_client::Member>> {
    let mut healthy = Vec::new();
    for m in voting {
        if let Some(url) = m.client_urls().first() {
            if answers(url, tls).await {
                healthy.push(*m);
            }
        }
    }
    let quorum = voting.len() / 2 + 1;
    if healthy.len() < quorum {
        bail!(
            "only {} of the {} voting etcd members answer, and quorum needs {quorum}: adding a member now is not safe; bring the others back first",
            healthy.len(),
            voting.len()
        );
    }
    Ok(healthy)
}

/// The new member must be able to talk to a quorum of the others, and its peer address must be
/// this host's and free.
async fn check_reachable(
    healthy: &[&etcd_client::Member],
    quorum: usize,
    peer_url: &str,
) -> Result<()> {
    let mut reachable = 0;
    for m in healthy {
        if let Some(addr) = m.peer_urls().first().and_then(|u| host_port(u)) {
            let connect = tokio::net::TcpStream::connect(addr.clone());
            if tokio::time::timeout(Duration::from_secs(2), connect)
                .await
                .is_ok_and(|r| r.is_ok())
            {
                reachable += 1;
            } else {
                tracing::warn!("the etcd peer address {addr} does not answer from this node");
            }
        }
    }
    if reachable < quorum {
        bail!("from this node only {reachable} of the healthy etcd members' peer ports (2380) answer, and quorum needs {quorum}: check the firewall between the control-plane nodes");
    }
    let own = host_port(peer_url).ok_or_else(|| anyhow!("bad peer URL {peer_url}"))?;
    if let Err(e) = std::net::TcpListener::bind(&own) {
        bail!("this node cannot listen on its etcd peer address {own}: {e}");
    }
    Ok(())
}

/// Adds `peer_url` as a learner. etcd refuses a new member, learner or not, unless every voting
/// member has been connected for 5 s (its strict reconfiguration check, on in kubeadm's
/// manifests). Right after the previous join's promotion that passes in seconds: retry. With a
/// voting member `down` it cannot pass: say which, at once.
async fn add_as_learner(
    client: &mut Client,
    peer_url: &str,
    name: &str,
    down: &[String],
    limit: Duration,
) -> Result<u64> {
    let start = Instant::now();
    loop {
        match client
            .member_add([peer_url], Some(MemberAddOptions::new().with_is_learner()))
            .await
        {
            Ok(added) => {
                return added
                    .member()
                    .map(|m| m.id())
                    .ok_or_else(|| anyhow!("etcd did not return the added member"))
            }
            Err(e) if e.to_string().contains("unhealthy cluster") && !down.is_empty() => {
                bail!("etcd accepts no new member while a voting member is unreachable (its strict reconfiguration check), and {} does not answer; a quorum is up, so the cluster works, but bring that member back or remove it (etcdctl member remove) before joining", down.join(", "));
            }
            Err(e) if e.to_string().contains("unhealthy cluster") && start.elapsed() < limit => {
                tracing::info!("etcd refuses the new member for now ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => bail!("adding {name} ({peer_url}) to etcd as a learner: {e}"),
        }
    }
}

/// Checks quorum and reachability, then adds this node (`name`, `peer_url`) as a learner; a
/// member with the same peer URL is taken as this node's from an earlier run.
pub async fn add_learner(
    endpoints: &[String],
    tls: &Tls,
    name: &str,
    peer_url: &str,
    limit: Duration,
) -> Result<Added> {
    let mut client = connect_live(endpoints, tls).await?;
    let list = client.member_list().await?;
    let members = list.members();
    if let Some(me) = members
        .iter()
        .find(|m| m.peer_urls().iter().any(|u| u == peer_url))
    {
        return Ok(Added {
            id: me.id(),
            initial_cluster: initial_cluster(members, me.id(), name),
            voting: !me.is_learner(),
        });
    }
    let voting: Vec<_> = members.iter().filter(|m| !m.is_learner()).collect();
    let healthy = healthy_quorum(&voting, tls).await?;
    check_reachable(&healthy, voting.len() / 2 + 1, peer_url).await?;
    let down: Vec<String> = voting
        .iter()
        .filter(|m| !healthy.iter().any(|h| h.id() == m.id()))
        .map(|m| describe(m))
        .collect();
    let id = add_as_learner(&mut client, peer_url, name, &down, limit).await?;
    let after = client.member_list().await?;
    Ok(Added {
        id,
        initial_cluster: initial_cluster(after.members(), id, name),
        voting: false,
    })
}

/// Promotes learner `id` as soon as the leader has it in sync, retrying until `limit`. On
/// failure, says whether the learner ever answered at `client_url`.
pub async fn promote(
    endpoints: &[String],
    tls: &Tls,
    id: u64,
    client_url: &str,
    limit: Duration,
) -> Result<()> {
    let start = Instant::now();
    let mut started = false;
    let mut last = String::new();
    loop {
        started = started || answers(client_url, tls).await;
        if started {
            match connect_live(endpoints, tls).await {
                Ok(mut c) => match c.member_promote(id).await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
        }
        if start.elapsed() > limit {
            if started {
                bail!("the new etcd member started but did not catch up with the leader within {limit:?} ({last})");
            }
            bail!("the new etcd member never answered at {client_url} within {limit:?}: its container did not start or exits (see its log under /var/log/pods/kube-system_etcd-*)");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Removes member `id` (a learner that did not make it), retrying briefly.
pub async fn remove(endpoints: &[String], tls: &Tls, id: u64) -> Result<()> {
    let mut last = None;
    for _ in 0..10 {
        match connect_live(endpoints, tls).await {
            Ok(mut c) => match c.member_remove(id).await {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e.to_string()),
            },
            Err(e) => last = Some(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!(
        "removing the etcd learner {id:x} failed: {}; remove it by hand (etcdctl member remove {id:x})",
        last.unwrap_or_default()
    )
}

/// What `leave` found.
pub enum Left {
    /// This node's member was removed from the cluster (its hex ID).
    Removed(u64),
    /// It is the cluster's only member: nothing to remove it from.
    OnlyMember,
    /// No member has this node's peer URL.
    NotMember,
}

/// Takes this node's member (`peer_url`) out of the cluster, asking the member at `client_url`
/// for the list and the other members to remove it, as `kubeadm reset` does before it deletes
/// the data: a control-plane node reset without this leaves a dead voting member behind, and a
/// two-member cluster without quorum.
pub async fn leave(client_url: &str, tls: &Tls, peer_url: &str) -> Result<Left> {
    let mut local = connect(&[client_url.to_string()], tls).await?;
    let list = local.member_list().await?;
    let Some(me) = list
        .members()
        .iter()
        .find(|m| m.peer_urls().iter().any(|u| u == peer_url))
    else {
        return Ok(Left::NotMember);
    };
    let others: Vec<String> = list
        .members()
        .iter()
        .filter(|m| m.id() != me.id())
        .filter_map(|m| m.client_urls().first().cloned())
        .collect();
    if others.is_empty() {
        return Ok(Left::OnlyMember);
    }
    let mut client = connect_live(&others, tls).await?;
    client
        .member_remove(me.id())
        .await
        .map_err(|e| anyhow!("removing etcd member {:x}: {e}", me.id()))?;
    Ok(Left::Removed(me.id()))
}
