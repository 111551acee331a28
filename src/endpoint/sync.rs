//! `kubeforge endpoint sync`: the second container of the haproxy pod. It keeps haproxy's servers
//! equal to the API servers the cluster runs — the `default/kubernetes` EndpointSlice, which
//! every API server's lease reconciler keeps to the live ones — re-renders haproxy.cfg from the
//! same template when they change, and has haproxy reload through its master CLI socket (the
//! old worker keeps its connections). It never empties the list: an unreachable API or an empty
//! answer keeps the last configuration, and this node's own API server always stays.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;

use super::{render_haproxy, Member, SYNC_SETTINGS};
use crate::config::net::url_host;

/// What the sync needs, all from its command line (the manifest).
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// The balancers' configuration directory (haproxy.cfg and its settings).
    pub dir: PathBuf,
    /// The cluster CA the API servers' certificates are checked against.
    pub ca: PathBuf,
    /// The kubelet's client certificate and key (one PEM): the node's own identity.
    pub client_cert: PathBuf,
    /// haproxy's master CLI socket.
    pub master_socket: PathBuf,
    /// This node's API server (`host:port`), which always stays a server.
    pub local: Option<String>,
    /// Further API servers to ask (the control-plane endpoint), after this node's own and
    /// before the servers haproxy has.
    pub servers: Vec<String>,
    pub interval: Duration,
    /// One round, its error the exit status (tests, and an operator's check).
    pub once: bool,
}

/// The servers haproxy should have, when they differ from `current`: the live API servers and
/// this node's own. None when nothing changes — or when the answer is empty, since a balancer
/// with no server serves nobody while the last list may still hold a live one.
pub fn next_members(
    current: &BTreeSet<String>,
    live: &[String],
    local: Option<&str>,
) -> Option<BTreeSet<String>> {
    let mut next: BTreeSet<String> = live.iter().cloned().collect();
    next.extend(local.map(str::to_string));
    (!next.is_empty() && next != *current).then_some(next)
}

/// The addresses of haproxy's servers in `haproxy_cfg` (`server <name> <address>` lines).
pub fn servers_in(haproxy_cfg: &str) -> BTreeSet<String> {
    haproxy_cfg
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("server")).then(|| words.nth(1))?
        })
        .map(str::to_string)
        .collect()
}

/// The ready API servers of `default/kubernetes` as `host:port`.
pub fn live_addresses(slice: &EndpointSlice) -> Vec<String> {
    let port = slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref().is_none_or(|n| n == "https"))
        .and_then(|p| p.port)
        .unwrap_or(443);
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .filter_map(|e| e.addresses.first())
        .map(|a| format!("{}:{port}", url_host(a)))
        .collect()
}

/// The EndpointSlice from the first of `servers` that answers within `limit` each.
async fn ask(options: &SyncOptions, servers: &[String], limit: Duration) -> Result<EndpointSlice> {
    let ca = std::fs::read(&options.ca).with_context(|| options.ca.display().to_string())?;
    let pem = std::fs::read(&options.client_cert)
        .with_context(|| options.client_cert.display().to_string())?;
    let mut errors = Vec::new();
    for server in servers {
        let url = if server.contains("://") {
            server.clone()
        } else {
            format!("https://{server}")
        };
        let attempt = async {
            let client = crate::kube::with_client_pem(&url, &ca, &pem)?;
            let slices: kube::Api<EndpointSlice> = kube::Api::namespaced(client, "default");
            Ok::<_, anyhow::Error>(slices.get("kubernetes").await?)
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(slice)) => return Ok(slice),
            Ok(Err(e)) => errors.push(format!("{url}: {e:#}")),
            Err(_) => errors.push(format!("{url}: no answer within {limit:?}")),
        }
    }
    bail!("no API server answered: {}", errors.join("; "))
}

/// Sends `command` to haproxy's master CLI and returns its answer.
fn master_command(socket: &Path, command: &str) -> Result<String> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to haproxy's master socket {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    // The end of the input ends the session: the master answers and closes.
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .with_context(|| format!("reading haproxy's answer to {command:?}"))?;
    Ok(answer)
}

/// The master's line of `show proc`: `<pid> master <reloads> [failed: <n>] …`.
fn master_line(socket: &Path) -> Result<String> {
    master_command(socket, "show proc")?
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("master"))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("haproxy's `show proc` names no master"))
}

/// The master's reload count (`show proc`'s third column).
fn reloads(master: &str) -> u64 {
    let field = master.split_whitespace().nth(2);
    field.and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// The master's failed reloads (`[failed: <n>]`, absent before the first reload).
fn failures(master: &str) -> u64 {
    let rest = master.split("failed:").nth(1).unwrap_or("");
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap_or(0)
}

/// haproxy reloads its configuration: the master re-reads it and starts new workers, the old
/// ones finish their connections. Fails when the master did not reload or counted a failure
/// (then it keeps serving with the old configuration).
pub fn reload(socket: &Path) -> Result<()> {
    let before = master_line(socket)?;
    master_command(socket, "reload")?;
    let start = Instant::now();
    loop {
        // The master re-executes itself: its socket answers again once it has read the file.
        if let Ok(after) = master_line(socket) {
            if failures(&after) > failures(&before) {
                bail!("haproxy refused the new configuration (it keeps the old one): {after}");
            }
            if reloads(&after) > reloads(&before) {
                return Ok(());
            }
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("haproxy's master did not reload within 10 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One round: ask the API servers, and when the live set differs from haproxy's, write the new
/// haproxy.cfg and reload. `loaded` is the configuration haproxy runs: a file rewritten by a
/// kubeforge run since is reloaded too. Returns the new servers when they changed.
pub fn sync_once(
    options: &SyncOptions,
    settings: &Value,
    loaded: &mut Option<String>,
) -> Result<Option<BTreeSet<String>>> {
    let path = options.dir.join("haproxy.cfg");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    if loaded.as_ref().is_some_and(|l| *l != text) {
        reload(&options.master_socket)?;
    }
    *loaded = Some(text.clone());
    let current = servers_in(&text);
    let servers: Vec<String> = options
        .local
        .iter()
        .chain(&options.servers)
        .chain(&current)
        .cloned()
        .collect();
    let slice = crate::block_on(ask(options, &servers, Duration::from_secs(3)))?;
    let live = live_addresses(&slice);
    let Some(next) = next_members(&current, &live, options.local.as_deref()) else {
        return Ok(None);
    };
    let members: Vec<Member> = next.iter().map(|a| Member::at(a)).collect();
    let rendered = render_haproxy(settings, &members)?;
    crate::node::replace_file(&path, rendered.as_bytes(), 0o644)?;
    // Only once haproxy has it: a failed reload is tried again next round (the file differs).
    reload(&options.master_socket)?;
    *loaded = Some(rendered);
    Ok(Some(next))
}

/// The sync's loop: a round every `interval`, errors logged and the last configuration kept.
pub fn run(options: &SyncOptions) -> Result<()> {
    let settings_path = options.dir.join(SYNC_SETTINGS);
    let settings: Value = serde_json::from_slice(
        &std::fs::read(&settings_path).with_context(|| settings_path.display().to_string())?,
    )
    .with_context(|| settings_path.display().to_string())?;
    let mut loaded = None;
    loop {
        match sync_once(options, &settings, &mut loaded) {
            Ok(Some(next)) => eprintln!(
                "haproxy reloaded with the API servers {}",
                next.into_iter().collect::<Vec<_>>().join(", ")
            ),
            Ok(None) => {}
            Err(e) if options.once => return Err(e),
            Err(e) => eprintln!("keeping haproxy's servers as they are: {e:#}"),
        }
        if options.once {
            return Ok(());
        }
        std::thread::sleep(options.interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn live(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_joined_server_is_added_and_a_gone_one_removed() {
        let current = set(&["10.0.0.1:6443", "10.0.0.2:6443"]);
        let joined = live(&["10.0.0.1:6443", "10.0.0.2:6443", "10.0.0.3:6443"]);
        assert_eq!(
            next_members(&current, &joined, Some("10.0.0.1:6443")),
            Some(set(&["10.0.0.1:6443", "10.0.0.2:6443", "10.0.0.3:6443"]))
        );
        let reset = live(&["10.0.0.1:6443"]);
        assert_eq!(
            next_members(&current, &reset, Some("10.0.0.1:6443")),
            Some(set(&["10.0.0.1:6443"]))
        );
    }

    #[test]
    fn the_same_servers_in_another_order_change_nothing() {
        let current = set(&["10.0.0.1:6443", "10.0.0.2:6443"]);
        let same = live(&["10.0.0.2:6443", "10.0.0.1:6443", "10.0.0.2:6443"]);
        assert_eq!(next_members(&current, &same, None), None);
    }

    #[test]
    fn the_list_is_never_emptied_and_the_local_server_stays() {
        let current = set(&["10.0.0.1:6443", "10.0.0.2:6443"]);
        // A worker (no local API server) told "no API server": keeps what it has.
        assert_eq!(next_members(&current, &[], None), None);
        // A control-plane node whose own lease lapsed: it stays a server.
        assert_eq!(
            next_members(&current, &live(&["10.0.0.2:6443"]), Some("10.0.0.1:6443")),
            None
        );
        assert_eq!(
            next_members(&current, &[], Some("10.0.0.1:6443")),
            Some(set(&["10.0.0.1:6443"]))
        );
    }

    #[test]
    fn servers_are_read_back_from_the_rendered_file() {
        let settings = serde_json::json!({
            "monitorBind": "127.0.0.1:8404", "balancerBind": "*:8443", "caFile": "/pki/ca.crt",
        });
        let members = [Member::at("10.0.0.2:6443"), Member::at("[fd00::1]:6443")];
        let text = render_haproxy(&settings, &members).unwrap();
        assert_eq!(servers_in(&text), set(&["10.0.0.2:6443", "[fd00::1]:6443"]));
        assert!(
            text.contains("server fd00::1:6443 [fd00::1]:6443"),
            "{text}"
        );
    }

    #[test]
    fn show_proc_master_lines_are_read() {
        let first = "1490  master  0  0d00h00m02s  2.6.12-1+deb12u4";
        let later = "1490  master  3 [failed: 1]  0d00h01m02s  2.6.12-1+deb12u4";
        assert_eq!((reloads(first), failures(first)), (0, 0));
        assert_eq!((reloads(later), failures(later)), (3, 1));
    }

    #[test]
    fn not_ready_endpoints_are_left_out() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "addressType": "IPv4",
            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"]},
            ],
        }))
        .unwrap();
        assert_eq!(
            live_addresses(&slice),
            live(&["10.0.0.1:6443", "10.0.0.3:6443"])
        );
    }
}
