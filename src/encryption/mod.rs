//! Encryption at rest for Secrets (Security `encryptionAtRest`, docs/security.md): the API
//! server's `EncryptionConfiguration` at `<pki>/encryption-config.yaml`, its `secretbox` keys,
//! and the steps of a key rotation as changes to that file.
//!
//! secretbox (XSalsa20-Poly1305) and not aesgcm (a key must be rotated every 200k writes, as its
//! random nonces repeat) nor aescbc (which the Kubernetes documentation no longer recommends:
//! CBC is open to padding-oracle attacks); CIS 1.2.28 accepts secretbox, aescbc or kms.
//!
//! The file itself holds a rotation's state: key names are `key-<UTC time of creation>`, so the
//! order of the two keys during a rotation says which step it reached (see `Stage`).

pub mod record;
pub mod rewrite;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The file's name in the PKI directory, and its data key in `kube-system/kubeadm-certs`.
pub const FILE: &str = "encryption-config.yaml";
pub const MODE: u32 = 0o600;
const API_VERSION: &str = "apiserver.config.k8s.io/v1";
const KIND: &str = "EncryptionConfiguration";
/// The prefix of what the API server stores in etcd for a Secret encrypted with key `name`.
pub const STORED_PREFIX: &str = "k8s:enc:secretbox:v1:";

pub fn path(pki_dir: &Path) -> PathBuf {
    pki_dir.join(FILE)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EncryptionConfiguration {
    api_version: String,
    kind: String,
    resources: Vec<ResourceConfiguration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceConfiguration {
    resources: Vec<String>,
    providers: Vec<Provider>,
}

/// One provider: exactly one of its fields is set (the API's shape, a struct of options).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Provider {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secretbox: Option<Keys>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity: Option<Empty>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Keys {
    keys: Vec<Key>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    pub name: String,
    /// base64 of 32 random bytes.
    pub secret: String,
}

impl Key {
    /// A new random key named after `now` (UTC, to the second: names sort by age).
    pub fn generate(now: OffsetDateTime) -> Key {
        let mut bytes = [0u8; 32];
        rand::rng().fill(&mut bytes);
        let stamp = now
            .to_offset(time::UtcOffset::UTC)
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .expect("static format");
        Key {
            name: format!("key-{stamp}"),
            secret: STANDARD.encode(bytes),
        }
    }
}

/// Where a rotation stands, read from the order of the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// One key: no rotation under way.
    Single,
    /// `add` done: the new key second, readable but not used for writing.
    Added,
    /// `promote` done: the new key first (writes use it), the old one second (still readable).
    Promoted,
}

impl EncryptionConfiguration {
    /// Secrets encrypted with `key`, then readable unencrypted (identity) — Secrets written
    /// before encryption was switched on stay readable.
    pub fn new(key: Key) -> EncryptionConfiguration {
        EncryptionConfiguration {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            resources: vec![ResourceConfiguration {
                resources: vec!["secrets".into()],
                providers: vec![
                    Provider {
                        secretbox: Some(Keys { keys: vec![key] }),
                        ..Default::default()
                    },
                    Provider {
                        identity: Some(Empty {}),
                        ..Default::default()
                    },
                ],
            }],
        }
    }

    /// The file's text; `source` names it in errors. Only the shape kubeforge writes is
    /// accepted: rotation must know what every key is for.
    pub fn parse(text: &str, source: &str) -> Result<EncryptionConfiguration> {
        let config: EncryptionConfiguration = serde_yaml::from_str(text).with_context(|| {
            format!("{source}: not an EncryptionConfiguration as kubeforge writes it")
        })?;
        if config.api_version != API_VERSION || config.kind != KIND {
            bail!("{source}: apiVersion/kind must be {API_VERSION} {KIND}");
        }
        let keys = config.keys_checked();
        match keys {
            Some(keys) if (1..=2).contains(&keys.len()) => {
                for key in keys {
                    let ok = STANDARD.decode(&key.secret).is_ok_and(|b| b.len() == 32);
                    if !ok || key.name.contains(':') {
                        bail!("{source}: key {:?}: the secret must be 32 bytes in base64 and the name without ':'", key.name);
                    }
                }
                if keys.len() == 2 && keys[0].name == keys[1].name {
                    bail!("{source}: two keys named {:?}", keys[0].name);
                }
                Ok(config)
            }
            _ => bail!("{source}: expected one resource (secrets) with a secretbox provider of one or two keys, then identity"),
        }
    }

    pub fn read(path: &Path) -> Result<Option<EncryptionConfiguration>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &path.display().to_string()).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("the configuration serializes")
    }

    fn keys_checked(&self) -> Option<&Vec<Key>> {
        match self.resources.as_slice() {
            [ResourceConfiguration {
                resources,
                providers,
            }] if resources == &["secrets"] => match providers.as_slice() {
                [Provider {
                    secretbox: Some(Keys { keys }),
                    identity: None,
                }, Provider {
                    secretbox: None,
                    identity: Some(_),
                }] => Some(keys),
                _ => None,
            },
            _ => None,
        }
    }

    fn keys_mut(&mut self) -> &mut Vec<Key> {
        let first = &mut self.resources[0].providers[0].secretbox;
        &mut first
            .as_mut()
            .expect("parse and new put secretbox first")
            .keys
    }

    /// The keys, the one that encrypts first.
    pub fn keys(&self) -> &[Key] {
        self.keys_checked().expect("parse and new check the shape")
    }

    pub fn stage(&self) -> Stage {
        match self.keys() {
            [_] => Stage::Single,
            [first, second] if second.name > first.name => Stage::Added,
            _ => Stage::Promoted,
        }
    }

    /// `new` as the second key (the API server reads with it, still writes with the first).
    /// Past `Single` nothing changes: the rotation already has its new key.
    pub fn add(&mut self, new: Key) {
        if self.stage() == Stage::Single {
            self.keys_mut().push(new);
        }
    }

    /// The new key first: writes use it. Only from `Added`.
    pub fn promote(&mut self) {
        if self.stage() == Stage::Added {
            self.keys_mut().swap(0, 1);
        }
    }

    /// The old key dropped. Only from `Promoted`, and only once every Secret was rewritten.
    pub fn prune(&mut self) {
        if self.stage() == Stage::Promoted {
            self.keys_mut().truncate(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + second).unwrap()
    }

    #[test]
    fn a_rotation_goes_add_promote_prune_and_each_step_is_idempotent() {
        let old = Key::generate(at(0));
        let new = Key::generate(at(1));
        assert_ne!(old.secret, new.secret);
        let mut c = EncryptionConfiguration::new(old.clone());
        assert_eq!(c.stage(), Stage::Single);
        c.promote();
        c.prune();
        assert_eq!(c.keys(), std::slice::from_ref(&old));
        c.add(new.clone());
        c.add(Key::generate(at(2)));
        assert_eq!(c.stage(), Stage::Added);
        assert_eq!(c.keys(), [old.clone(), new.clone()]);
        c.prune();
        assert_eq!(c.stage(), Stage::Added);
        c.promote();
        c.promote();
        assert_eq!(c.stage(), Stage::Promoted);
        assert_eq!(c.keys(), [new.clone(), old]);
        c.add(Key::generate(at(3)));
        assert_eq!(c.stage(), Stage::Promoted);
        c.prune();
        c.prune();
        assert_eq!(c.keys(), [new]);
        let back = EncryptionConfiguration::parse(&c.to_yaml(), "x").unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn only_kubeforges_shape_parses() {
        let good = EncryptionConfiguration::new(Key::generate(at(0))).to_yaml();
        assert!(EncryptionConfiguration::parse(&good, "f").is_ok());
        let cases = [
            good.replace("secretbox", "aesgcm"),
            good.replace("- secrets", "- configmaps"),
            good.replace("identity: {}", "secretbox: {keys: []}"),
            good.replace("kind: EncryptionConfiguration", "kind: EncryptionConfig"),
            good.replace("secret: ", "secret: AAAA").replace("=", ""),
            good.replace("name: key-", "name: a:key-"),
            good.replace(
                "resources:\n",
                "resources:\n- resources: [secrets]\n  providers: [{identity: {}}]\n",
            ),
        ];
        for bad in cases {
            let Err(e) = EncryptionConfiguration::parse(&bad, "the file") else {
                panic!("accepted:\n{bad}");
            };
            assert!(format!("{e:#}").starts_with("the file: "), "{e:#}\n{bad}");
        }
    }

    #[test]
    fn key_names_sort_by_creation_time() {
        let names: Vec<String> = [0, 59, 3600, 86400 * 400]
            .iter()
            .map(|s| Key::generate(at(*s)).name)
            .collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
        assert_eq!(names[0], "key-20270115T080000Z");
    }
}
