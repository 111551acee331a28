//! `kubeforge join` (contract 7), kubeadm's phases and names: `preflight`,
//! `control-plane-prepare` (a control-plane join: the shared certificates downloaded and
//! decrypted, this node's own certificates, kubeconfigs and manifests), `kubelet-start` (the
//! cluster CA and the bootstrap kubeconfig, the kubelet's files from the cluster's uploaded
//! configuration, the kubelet started and its TLS bootstrap followed until the Node is
//! registered), `etcd-join`, `wait-control-plane`, `control-plane-join`.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::json;

use super::{init, Data, Env, Phase, Selection, Step};
use crate::cluster::certs_secret;
use crate::cluster::discovery::{self, ClusterInfo};
use crate::config::join::JoinRequest;
use crate::config::GoDuration;
use crate::etcd;
use crate::manifests::{first_container, flag, Component};
use crate::node::File;
use crate::output::Output;

/// What a join's phases work with: the node's Env, the cluster it trusts, and what it was asked.
pub struct JoinData {
    pub env: Env,
    pub cluster: ClusterInfo,
    pub request: JoinRequest,
}

impl Data for JoinData {
    fn out(&self) -> &Output {
        &self.env.out
    }
}

fn control_plane(d: &JoinData) -> bool {
    d.request.control_plane.is_some()
}

/// join's phases; the control-plane ones leave a worker out.
pub fn phases() -> Vec<Phase<JoinData>> {
    vec![
        Phase::new("preflight", "Run pre-flight checks").run(preflight),
        Phase::new("control-plane-prepare", "Prepare the machine for serving a control plane")
            .run_if_noted(control_plane, "Skipping: not a control-plane join")
            .children(vec![
                Phase::new("download-certs", "Download certificates shared among control-plane nodes from the kubeadm-certs Secret").run(download_certs),
                Phase::new("certs", "Generate the certificates for the new control plane components").run(certs),
                Phase::new("kubeconfig", "Generate the kubeconfig for the new control plane components").run(kubeconfigs),
                Phase::new("control-plane", "Generate the manifests for the new control plane components").run(manifests),
                Phase::new("control-plane-endpoint", "Generate the balancers (haproxy, keepalived) with every control-plane node behind them")
                    .run_if_noted(|d: &JoinData| d.env.cfg.endpoint.is_some(), "The cluster has no ControlPlaneEndpoint: skipping the balancers")
                    .run(endpoint),
            ]),
        Phase::new("kubelet-start", "Write kubelet settings, certificates and (re)start the kubelet").run(kubelet_start),
        Phase::new("node-local-endpoint", "Run a balancer in front of every API server on this worker and point its kubelet at it")
            .run_if_noted(node_local, "Skipping: not a worker of a cluster whose ControlPlaneEndpoint asks for nodeLocal")
            .run(node_local_endpoint),
        Phase::new("etcd-join", "Add this node's etcd to the cluster as a learner, then promote it")
            .run_if_noted(
                |d| control_plane(d) && !d.env.cfg.cluster.is_external_etcd(),
                "Skipping: no local etcd member to add",
            )
            .run(etcd_join),
        Phase::new(
            "wait-control-plane",
            "Wait for the new control-plane components to be healthy and their mirror pods Ready",
        )
        .run_if(control_plane)
        .run(wait_control_plane),
        Phase::new("control-plane-join", "Join a machine as a control plane instance")
            .run_if(control_plane)
            .children(vec![Phase::new("mark-control-plane", "Mark a node as a control-plane")
                .run(|d, _| init::mark_control_plane_node(&d.env))]),
        Phase::new("kubelet-serving", init::KUBELET_SERVING)
            .run_if_noted(
                |d: &JoinData| control_plane(d) && d.env.cfg.security.hardened(),
                "Skipping: not a control-plane join, or profile kubeadm",
            )
            .run(|d, step| init::write_approver_and_approve(&mut d.env, step.name)),
    ]
}

fn preflight(d: &mut JoinData, _: &Step) -> Result<()> {
    let env = &d.env;
    let enforce = env.effects().enforce_preflight();
    crate::preflight::run(&env.cfg, &env.layout, &env.out, control_plane(d), enforce)?;
    if control_plane(d) {
        init::pull_images(env)?;
    }
    Ok(())
}

fn download_certs(d: &mut JoinData, _: &Step) -> Result<()> {
    let env = &mut d.env;
    let key = d
        .request
        .control_plane
        .as_ref()
        .and_then(|c| c.certificate_key.clone());
    let Some(key) = key else {
        env.out.step(
            "download-certs",
            "No --certificate-key: using the shared certificates already on this node",
            json!({ "downloaded": false }),
        );
        return require_encryption_config(env, false);
    };
    env.out.step(
        "download-certs",
        "Downloading the certificates in Secret \"kubeadm-certs\" in the \"kube-system\" Namespace",
        json!({ "secret": "kube-system/kubeadm-certs" }),
    );
    let (cluster, token) = (&d.cluster, &d.request.token);
    let downloaded = crate::block_on(async {
        let client = crate::kube::with_token(&cluster.server, &cluster.ca_pem, token).await?;
        certs_secret::download(client, &key).await
    })?;
    let uploaded = downloaded
        .iter()
        .any(|(n, c)| n == crate::encryption::FILE && !c.is_empty());
    require_encryption_config(env, uploaded)?;
    let external = env.cfg.cluster.etcd.external.clone();
    for (name, path) in certs_secret::files(&env.layout.pki_dir, external.as_ref()) {
        let Some((_, content)) = downloaded.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        if content.is_empty() {
            continue;
        }
        if let Some(parent) = path.parent() {
            env.writer.ensure_dir(parent, 0o755)?;
        }
        // sa.pub is 0600 like the keys, as the certs phase (and kubeadm) writes it.
        let mode = if name.ends_with(".crt") { 0o644 } else { 0o600 };
        env.write("download-certs", &File::new(path, content, mode))?;
    }
    Ok(())
}

/// A cluster that encrypts Secrets needs the same EncryptionConfiguration on every API server:
/// uploaded with the certificates, or copied by the operator. Checked before anything is written.
fn require_encryption_config(env: &Env, uploaded: bool) -> Result<()> {
    let path = crate::encryption::path(&env.layout.pki_dir);
    if !env.cfg.security.encryption_at_rest || uploaded || env.writer.exists(&path) {
        return Ok(());
    }
    bail!(
        "the cluster encrypts Secrets at rest (its Security document says encryptionAtRest: true) but {} is missing: join with --certificate-key (the file is uploaded with the certificates), or copy it from a control-plane node (mode 0600) as you copied the shared certificates",
        path.display()
    )
}

/// Every certificate this control-plane node needs (the shared CAs are on disk by now).
fn certs(d: &mut JoinData, _: &Step) -> Result<()> {
    let env = &mut d.env;
    let mut names: Vec<String> = crate::pki::certificate_profiles()
        .into_iter()
        .map(|p| p.name)
        .collect();
    names.push(crate::pki::plan::SA.into());
    let mut plan = init::certificate_plan(env, &names)?;
    for name in plan.names() {
        let files = plan.files(&env.cfg, &env.layout, &env.out, &name)?;
        env.write_all("certs", &files)?;
    }
    Ok(())
}

/// kubeadm: a joining control plane gets admin.conf and its components' kubeconfigs;
/// kubelet.conf comes from the TLS bootstrap, super-admin.conf stays on the first node.
fn kubeconfigs(d: &mut JoinData, _: &Step) -> Result<()> {
    let env = &mut d.env;
    for name in ["admin", "controller-manager", "scheduler"] {
        let mut plan = init::kubeconfig_plan(env, &[name.to_string()])?;
        let files = plan.files(&env.cfg, &env.layout, &env.out, name)?;
        env.write_all("kubeconfig", &files)?;
    }
    Ok(())
}

fn manifests(d: &mut JoinData, _: &Step) -> Result<()> {
    init::prepare_control_plane_dir(&mut d.env)?;
    for component in Component::CONTROL_PLANE {
        init::write_component(&mut d.env, "control-plane", component)?;
    }
    Ok(())
}

/// The balancers, with the API servers the cluster runs (their mirror pods, read with this
/// node's new admin.conf) and this node behind them.
fn endpoint(d: &mut JoinData, step: &Step) -> Result<()> {
    let env = &mut d.env;
    let admin = env.writer.target(&env.layout.kubeconfig("admin.conf"));
    let limit = env.cfg.init.timeouts.kubernetes_api_call.0;
    let mut members = crate::block_on(async {
        let client = crate::kube::client(&admin, None).await?;
        crate::endpoint::members_from_pods(&client, limit).await
    })?;
    members.push(crate::endpoint::Member::local(&env.cfg));
    init::write_endpoint_files(env, step.name, &members)
}

fn node_local(d: &JoinData) -> bool {
    !control_plane(d) && d.env.cfg.endpoint.as_ref().is_some_and(|e| e.node_local)
}

/// The worker's haproxy (and its sync) as a static pod on 127.0.0.1, then kubelet.conf — the
/// TLS bootstrap's — pointed at it and the kubelet restarted.
fn node_local_endpoint(d: &mut JoinData, step: &Step) -> Result<()> {
    let env = &mut d.env;
    let files = crate::endpoint::worker_files(&env.cfg, &env.layout)?;
    env.writer
        .ensure_dir(&crate::endpoint::config_dir(&env.layout), 0o755)?;
    env.writer
        .ensure_dir(&env.layout.manifests_dir.clone(), 0o700)?;
    let ep = env
        .cfg
        .endpoint
        .clone()
        .expect("run only with the document");
    let url = crate::endpoint::node_local_url(&ep);
    env.out.step(
        step.name,
        &format!("Writing the node-local balancer: haproxy on {url} in front of the API servers"),
        json!({ "url": url }),
    );
    env.write_all(step.name, &files)?;
    let path = env.layout.kubeconfig("kubelet.conf");
    let Some(bytes) = env.writer.read(&path)? else {
        env.out.step(
            step.name,
            "kubelet.conf is not there: a re-run of this phase points it at the balancer",
            json!({ "kubeletConf": false }),
        );
        return Ok(());
    };
    let conf = crate::endpoint::node_local_kubeconfig(&bytes, &ep)?;
    env.out.step(
        step.name,
        &format!(
            "Pointing {:?} at {url} (tls-server-name kubernetes)",
            path.display().to_string()
        ),
        json!({ "path": path, "server": url }),
    );
    let outcome = env.write(step.name, &File::new(path, conf, 0o600))?;
    if !matches!(outcome, crate::node::Outcome::Unchanged) {
        env.effects().restart_kubelet(env, step.name);
    }
    Ok(())
}

fn kubelet_start(d: &mut JoinData, _: &Step) -> Result<()> {
    let env = &mut d.env;
    let kubelet_conf = env.layout.kubeconfig("kubelet.conf");
    let bootstrap_conf = env.layout.kubeconfig("bootstrap-kubelet.conf");
    let ca_path = env.layout.pki_dir.join("ca.crt");
    env.writer.ensure_dir(&env.layout.pki_dir.clone(), 0o755)?;
    env.out.step(
        "kubelet-start",
        &format!(
            "Writing the cluster CA to {:?}",
            ca_path.display().to_string()
        ),
        json!({ "path": ca_path }),
    );
    env.write(
        "kubelet-start",
        &File::new(ca_path, &d.cluster.ca_pem, 0o644),
    )?;
    if env.writer.exists(&kubelet_conf) {
        env.out.step(
            "kubelet-start",
            &format!(
                "{:?} exists: the kubelet has bootstrapped already",
                kubelet_conf.display().to_string()
            ),
            json!({ "joined": true }),
        );
    } else {
        env.out.step(
            "kubelet-start",
            &format!(
                "Writing the bootstrap kubeconfig to {:?}",
                bootstrap_conf.display().to_string()
            ),
            json!({ "path": bootstrap_conf }),
        );
        let conf = crate::kubelet::bootstrap::kubeconfig(
            &env.cfg.cluster.cluster_name,
            &d.cluster.server,
            &d.cluster.ca_pem,
            &d.request.token,
        );
        env.write(
            "kubelet-start",
            &File::new(bootstrap_conf.clone(), conf, 0o600),
        )?;
    }
    init::write_kubelet_files_and_start(env)?;
    env.effects().wait_tls_bootstrap(env, &bootstrap_conf)
}

/// The kubelet's TLS bootstrap followed until the Node is registered; the bootstrap kubeconfig
/// (it holds the token) removed afterwards.
pub(super) fn wait_tls_bootstrap_live(env: &mut Env, bootstrap_conf: &Path) -> Result<()> {
    let node = env.cfg.init.node_registration.name.clone();
    let limit = env.cfg.init.timeouts.tls_bootstrap.0;
    env.out.step(
        "kubelet-start",
        "Waiting for the kubelet to perform the TLS Bootstrap",
        json!({ "timeoutSeconds": limit.as_secs() }),
    );
    let start = Instant::now();
    let kubelet_conf = env.layout.kubeconfig("kubelet.conf");
    let ready = crate::block_on(crate::kubelet::bootstrap::wait(&kubelet_conf, &node, limit))?;
    env.writer.remove(bootstrap_conf)?;
    let state = if ready {
        "Ready"
    } else {
        "not Ready yet: install a pod network"
    };
    env.out.step(
        "kubelet-start",
        &format!(
            "The node {node} is registered after {:.1}s ({state})",
            start.elapsed().as_secs_f64()
        ),
        json!({ "node": node, "registered": true, "ready": ready }),
    );
    Ok(())
}

/// The peer and client URLs of this node's etcd, from its rendered manifest (one source for
/// them, patches included).
pub(super) struct EtcdUrls {
    pub peer: String,
    pub client: String,
}

impl EtcdUrls {
    pub fn of(manifest: &str) -> Result<EtcdUrls> {
        let command = first_container(manifest)?.command.unwrap_or_default();
        let url = |name| flag(&command, name).map(str::to_string);
        match (
            url("initial-advertise-peer-urls"),
            url("advertise-client-urls"),
        ) {
            (Some(peer), Some(client)) => Ok(EtcdUrls { peer, client }),
            _ => bail!(
                "the etcd manifest has no --initial-advertise-peer-urls or --advertise-client-urls"
            ),
        }
    }
}

fn etcd_join(d: &mut JoinData, _: &Step) -> Result<()> {
    let rendered = d.env.renderer().render(Component::Etcd)?;
    d.env.effects().join_etcd(&mut d.env, &rendered)
}

/// Quorum and reachability checked, this node added as a learner, its manifest written with
/// every member, and the learner promoted once in sync — or, when it never starts or never
/// catches up, removed again with this node's etcd manifest and data, the cluster as it was.
pub(super) fn join_etcd_live(env: &mut Env, rendered: &str) -> Result<()> {
    let urls = EtcdUrls::of(rendered)?;
    let node = env.cfg.init.node_registration.name.clone();
    let tls = etcd::Tls::healthcheck_client(&env.layout.pki_dir.join("etcd"))?;
    let limit = env.cfg.init.timeouts.etcd_api_call.0;
    let admin = crate::block_on(crate::kube::client(
        &env.layout.kubeconfig("admin.conf"),
        None,
    ))?;
    let endpoints = crate::block_on(etcd::endpoints_from_pods(&admin, limit))?;
    env.out.step(
        "etcd-join",
        &format!(
            "Checking etcd quorum through {} and adding {node} ({}) as a learner",
            endpoints.join(", "),
            urls.peer
        ),
        json!({ "endpoints": endpoints, "peerURL": urls.peer }),
    );
    let added = crate::block_on(etcd::add_learner(
        &endpoints, &tls, &node, &urls.peer, limit,
    ))?;
    let manifest = Component::Etcd.manifest(&env.layout);
    let member = format!("{:x}", added.id);
    if added.voting && manifest.exists() {
        // --initial-cluster only counts at the member's first start: the manifest stays.
        env.out.step(
            "etcd-join",
            &format!("{node} is a voting etcd member already; its manifest is kept"),
            json!({ "member": member, "voting": true }),
        );
        return Ok(());
    }
    init::prepare_etcd_dirs(env)?;
    let yaml = env.renderer().render_joining_etcd(&added.initial_cluster)?;
    init::write_manifest_file(env, "etcd", Component::Etcd, yaml)?;
    if added.voting {
        env.out.step(
            "etcd-join",
            &format!("{node} is a voting etcd member already"),
            json!({ "member": member, "voting": true }),
        );
        return Ok(());
    }
    promote_or_undo(env, &endpoints, &tls, &added, &urls)
}

/// The learner promoted once in sync; or removed again, with this node's etcd manifest and data,
/// so that the cluster is as it was and a re-run starts clean.
fn promote_or_undo(
    env: &mut Env,
    endpoints: &[String],
    tls: &etcd::Tls,
    added: &etcd::Added,
    urls: &EtcdUrls,
) -> Result<()> {
    let node = env.cfg.init.node_registration.name.clone();
    let limit = env.cfg.init.timeouts.etcd_api_call.0;
    let member = format!("{:x}", added.id);
    env.out.step(
        "etcd-join",
        &format!(
            "Waiting for the new etcd member {member} to catch up and be promoted. This can take up to {}",
            GoDuration(limit)
        ),
        json!({ "member": member, "initialCluster": added.initial_cluster }),
    );
    let start = Instant::now();
    let promoted = etcd::promote(endpoints, tls, added.id, &urls.client, limit);
    if let Err(why) = crate::block_on(promoted) {
        let removed = crate::block_on(etcd::remove(endpoints, tls, added.id));
        env.writer.remove(&Component::Etcd.manifest(&env.layout))?;
        env.writer
            .remove_tree(&env.layout.etcd_data_dir.join("member"))?;
        match removed {
            Ok(()) => bail!("{why:#}; the learner was removed again and this node's etcd manifest and data deleted: the etcd cluster is as it was"),
            Err(e) => bail!("{why:#}; and {e:#}"),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    env.out.step(
        "etcd-join",
        &format!("The etcd member {node} is promoted to a voting member after {seconds:.1}s"),
        json!({ "member": member, "voting": true, "seconds": seconds }),
    );
    Ok(())
}

fn wait_control_plane(d: &mut JoinData, _: &Step) -> Result<()> {
    d.env.effects().wait_control_plane(&mut d.env)
}

/// kubeadm's closing words of a join.
fn closing_words(control_plane: bool) -> &'static str {
    if control_plane {
        "\nThis node has joined the cluster and a new control plane instance was created:\n\n* Certificate signing request was sent to apiserver and approval was received.\n* The Kubelet was informed of the new secure connection details.\n* Control plane label and taint were applied to the new node.\n* The Kubernetes control plane instances scaled up.\n* A new etcd member was added to the local/stacked etcd cluster.\n\nRun 'kubectl get nodes' to see this node join the cluster."
    } else {
        "\nThis node has joined the cluster:\n* The kubelet was informed of the new secure connection details.\n\nRun 'kubectl get nodes' on the control-plane to see this node join the cluster."
    }
}

/// Discovery, the cluster's configuration downloaded with the token, then the join's phases as
/// `selection` says (every one, or `join phase <name>`).
pub fn run(
    request: JoinRequest,
    kubernetes_dir: &Path,
    kubelet_dir: &Path,
    out: Output,
    selection: &Selection,
) -> Result<()> {
    let cluster = crate::block_on(discovery::discover(&request))?;
    tracing::info!("discovered the cluster at {}", cluster.server);
    let stored = crate::block_on(async {
        let client =
            crate::kube::with_token(&cluster.server, &cluster.ca_pem, &request.token).await?;
        discovery::download_config(client).await
    })?;
    let cfg = request.node_config(&stored, kubernetes_dir)?;
    let selection = Selection {
        skip: cfg.init.skip_phases.clone(),
        ..selection.clone()
    };
    let env = Env::open(cfg, kubernetes_dir, kubelet_dir, None, out)?;
    let mut data = JoinData {
        env,
        cluster,
        request,
    };
    let phases = phases();
    super::run(&phases, &mut data, &selection)?;
    let closing = selection
        .phase
        .is_none()
        .then(|| closing_words(control_plane(&data)));
    data.env.finish(closing);
    Ok(())
}
