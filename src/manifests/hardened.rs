//! What profile `hardened` adds to the static pods (docs/security.md): profiling off, the API
//! server's audit policy and log, strong TLS cipher suites. The templates take it as `cis`, which
//! is `false` in profile `kubeadm` (kubeadm's files exactly).

use serde_json::{json, Value};
use std::path::PathBuf;

use crate::config::Config;
use crate::node::Layout;

/// The audit policy kubeforge writes (`templates/audit-policy.yaml`).
pub const AUDIT_POLICY: &str = include_str!("../../templates/audit-policy.yaml");

/// The policy is root's: the API server only reads it.
pub const AUDIT_POLICY_MODE: u32 = 0o600;

/// The audit log's directory: the API server writes there, nobody else reads it.
pub const AUDIT_LOG_DIR_MODE: u32 = 0o700;

/// The TLS 1.2 suites the CIS Benchmark accepts for the kubelet (4.2.12) — all of them ECDHE with
/// an AEAD cipher, a subset of what it accepts for the API server (1.2.29). TLS 1.3's suites are
/// not configurable in Go and stay on.
pub const TLS_CIPHER_SUITES: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
];

/// kube-controller-manager's own default, set explicitly: CIS 1.3.1 wants the flag, and a lower
/// value would delete the records of finished pods (Jobs' results) operators rely on.
pub const TERMINATED_POD_GC_THRESHOLD: u32 = 12500;

pub fn audit_policy_file(layout: &Layout) -> PathBuf {
    layout.audit_policy_file()
}

pub fn audit_log_file(layout: &Layout) -> PathBuf {
    layout.audit_log_dir.join("audit.log")
}

/// The templates' `cis` value: `false` in profile kubeadm, else what the hardened flags name.
pub fn template_data(cfg: &Config, layout: &Layout) -> Value {
    if !cfg.security.hardened() {
        return json!(false);
    }
    json!({
        "auditPolicyDir": layout.audit_policy_dir,
        "auditPolicyFile": audit_policy_file(layout),
        "auditLogDir": layout.audit_log_dir,
        "auditLogPath": audit_log_file(layout),
        "cipherSuites": TLS_CIPHER_SUITES.join(","),
        "terminatedPodGcThreshold": TERMINATED_POD_GC_THRESHOLD,
    })
}

/// The KubeletConfiguration fields profile hardened sets (CIS 4.2.12–4.2.14), under the
/// operator's document.
pub fn kubelet_settings() -> Value {
    json!({
        "podPidsLimit": 4096,
        "seccompDefault": true,
        "tlsCipherSuites": TLS_CIPHER_SUITES,
    })
}
