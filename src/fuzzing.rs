//! Entry points for the fuzz targets (`fuzz/fuzz_targets/`) and for their replay under `cargo
//! test` (tests/fuzz_corpus.rs, tests/config_properties.rs): arbitrary bytes through the code a
//! real run uses on a config file and on what a joining node reads from the network. They panic
//! only when a property fails, so every panic is a bug.

use std::path::Path;

use serde_json::Value;

use crate::cluster::discovery::{self, ClusterInfoSays};
use crate::cluster::token;
use crate::config::join::{JoinOptions, Trust};
use crate::config::{self, Config, ConfigError, Token};

/// The name fuzzed texts are read under.
pub const FILE: &str = "fuzzed.yaml";

/// A bootstrap token made up for fuzzing (kubeadm's documentation example).
pub const TOKEN: &str = "abcdef.0123456789abcdef";

/// `data` as a config file for init, join and upgrade; panics when a property fails.
pub fn config(data: &[u8]) {
    // A real run reads the file as UTF-8 and refuses anything else before parsing it.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(why) = check_config(text) {
            panic!("{why}\n--- input ---\n{text}");
        }
    }
}

/// The property: each loader either loads `text` or refuses it with an error that names the
/// file, a line of it and the field (all but a YAML syntax error, which has no field); a config
/// that loads is one every later step can use.
pub fn check_config(text: &str) -> Result<(), String> {
    let kubernetes_dir = Path::new("/etc/kubernetes");
    match config::load_str(text, FILE, &Default::default(), kubernetes_dir) {
        Ok(cfg) => use_config(&cfg),
        Err(e) => well_named(text, "init", &e)?,
    }
    if let Err(e) = config::upgrade::parse(text, FILE) {
        well_named(text, "upgrade", &e)?;
    }
    match config::join::validate(text, FILE) {
        Err(e) => well_named(text, "join", &e)?,
        Ok(()) => {
            JoinOptions::default()
                .check_file(text, FILE)
                .map_err(|e| format!("join: the JoinConfiguration passed its checks, then: {e}"))?;
        }
    }
    Ok(())
}

/// What the later steps derive from a config, which they take as valid.
fn use_config(cfg: &Config) {
    cfg.cluster.service_vip();
    cfg.cluster.dns_ip();
    cfg.bind_port();
    cfg.kubernetes_minor();
    cfg.control_plane_endpoint_url();
    crate::manifests::images(cfg);
    for profile in crate::pki::plan::profiles_for(cfg) {
        crate::pki::cert_spec(&profile, cfg);
    }
    for profile in crate::pki::kubeconfig_profiles() {
        crate::pki::kubeconfig_spec(&profile, cfg);
    }
    crate::kubelet::flags_env(cfg, "fuzzed-host");
}

fn well_named(text: &str, loader: &str, e: &ConfigError) -> Result<(), String> {
    // YAML breaks lines at \n, \r and \r\n; the error may point just past the last line.
    let lines = text.split(['\n', '\r']).count() + 1;
    let named = e.file == FILE
        && e.line.is_some_and(|l| (1..=lines).contains(&l))
        && (!e.field.is_empty() || e.message.starts_with("invalid YAML"));
    if named {
        Ok(())
    } else {
        Err(format!(
            "{loader}: an error without file, line or field: {e:?}"
        ))
    }
}

/// `data` as what a joining node reads from elsewhere: the cluster-info ConfigMap's JSON (its
/// kubeconfig, CA pin and signature) and, as text, a `--discovery-file` kubeconfig and a JWS.
pub fn discovery(data: &[u8]) {
    let token = Token::parse(TOKEN).expect("a valid token");
    // As the fetch does: a body that is not JSON is Null.
    let config_map: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
    let pinned = Trust::Pins(vec![format!("sha256:{}", "0".repeat(64))]);
    for trust in [Trust::Unpinned, pinned] {
        let says = discovery::read_cluster_info(&config_map, "fuzzed:6443", &token, &trust);
        if let Ok(
            ClusterInfoSays::Signed { cluster, .. } | ClusterInfoSays::NotSignedFor { cluster, .. },
        ) = says
        {
            // The client that then trusts the CA it was given.
            let _ = discovery::http(Some(&cluster.ca_pem));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = discovery::cluster_of(text, "fuzzed");
        token::jws_is_valid(text, "content", &token);
    }
}
