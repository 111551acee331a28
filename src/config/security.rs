//! kubeforge's own document, `kubeforge.io/v1alpha1` `Security`: how hardened the files kubeforge
//! writes are (docs/security.md). Without the document `init` hardens (profile `hardened`); a
//! cluster that stores none (built by kubeadm, or by a kubeforge before this document) keeps
//! kubeadm's shape through `join` and `upgrade` (profile `kubeadm`), so nothing is hardened
//! behind an operator's back.

use serde::{Deserialize, Serialize};

pub const KIND: &str = "Security";

/// The set of defaults kubeforge renders.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// The CIS Kubernetes Benchmark's scored checks pass (docs/security.md lists what stays).
    #[default]
    Hardened,
    /// Exactly the files kubeadm v1.35 writes.
    Kubeadm,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Security {
    #[serde(default)]
    pub profile: Profile,
    /// Secrets encrypted in etcd with a generated key (docs/security.md, "Encryption at rest").
    /// Opt-in in both profiles: with profile `kubeadm` it is the one departure from kubeadm's files.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encryption_at_rest: bool,
}

impl Security {
    pub fn hardened(&self) -> bool {
        self.profile == Profile::Hardened
    }

    /// What a cluster storing no Security document gets.
    pub fn kubeadm() -> Security {
        Security {
            profile: Profile::Kubeadm,
            encryption_at_rest: false,
        }
    }

    /// Whether init stores the document in the cluster: whenever it differs from kubeadm's, so
    /// that join and upgrade render the same files.
    pub fn stored(&self) -> bool {
        self.hardened() || self.encryption_at_rest
    }
}

/// The document as kubeforge stores it in `kube-system/kubeforge-security`.
pub fn document(security: &Security) -> String {
    let head = format!(
        "apiVersion: {}\nkind: {KIND}\n",
        super::endpoint::API_VERSION
    );
    head + &serde_yaml::to_string(security).expect("the document serializes")
}

/// The stored document, or kubeadm's profile for a cluster that stores none.
pub fn stored_or_kubeadm(stored: Option<&str>) -> String {
    match stored {
        Some(text) => text.to_string(),
        None => document(&Security::kubeadm()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_round_trips() {
        for (profile, encryption_at_rest) in [
            (Profile::Hardened, false),
            (Profile::Kubeadm, false),
            (Profile::Kubeadm, true),
        ] {
            let s = Security {
                profile,
                encryption_at_rest,
            };
            assert_eq!(
                document(&s).contains("encryptionAtRest"),
                encryption_at_rest
            );
            let text = document(&s);
            let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
            assert_eq!(v["kind"], "Security");
            let mut m = v.as_mapping().unwrap().clone();
            m.remove("apiVersion");
            m.remove("kind");
            let back: Security = serde_yaml::from_value(m.into()).unwrap();
            assert_eq!(back, s);
        }
    }
}
