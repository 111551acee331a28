//! `kube-system/kubeadm-certs` (contract 6.3): the control plane's shared CAs and keys, each
//! AES-256-GCM-encrypted with the 32-byte certificate key, stored as nonce || ciphertext || tag
//! (Go's `gcm.Seal(nonce, nonce, data, nil)`), under kubeadm's data key names.

use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;
use kube::api::Api;
use rand::Rng;
use std::collections::BTreeMap;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::objects::{self, TokenSecret};
use crate::config::{CertificateKey, Token};
use crate::kube::apply::{self, Applied, Object};

/// How long uploaded certificates stay readable (kubeadm: 2 h).
const TTL: Duration = Duration::from_secs(2 * 3600);

/// What an upload applies: the short-lived token Secret and the RBAC that lets joining nodes
/// read the certificates, then `kubeadm-certs` itself, owned by that token Secret so that the
/// garbage collector deletes it when the token expires.
pub struct Upload {
    pub rest: Vec<Object>,
    pub certs: Secret,
    owner: String,
}

/// `files`: (data key, file content; empty = absent, as kubeadm uploads an external CA's key).
pub fn upload_objects(
    files: &[(String, Vec<u8>)],
    key: &CertificateKey,
    now: OffsetDateTime,
) -> Result<Upload> {
    let data: BTreeMap<String, ByteString> = files
        .iter()
        // Absent unless Secrets are encrypted at rest: kubeadm's Secret, key for key, otherwise.
        .filter(|(name, plain)| name != crate::encryption::FILE || !plain.is_empty())
        .map(|(name, plain)| {
            let value = if plain.is_empty() {
                Vec::new()
            } else {
                encrypt(key, plain)
            };
            (name.clone(), ByteString(value))
        })
        .collect();
    let ttl_token = Token::generate();
    let rest = objects::upload_certs(&TokenSecret {
        id: ttl_token.id().into(),
        secret: ttl_token.secret().into(),
        description: String::new(),
        expiration: Some((now + TTL).format(&Rfc3339).expect("RFC 3339")),
        usages: Vec::new(),
        groups: Vec::new(),
    })?;
    Ok(Upload {
        rest,
        certs: Secret {
            metadata: ObjectMeta {
                name: Some("kubeadm-certs".into()),
                namespace: Some("kube-system".into()),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        },
        owner: format!("bootstrap-token-{}", ttl_token.id()),
    })
}

impl Upload {
    /// Every object of the upload: `rest`, then `certs`.
    pub fn all(&self) -> Vec<Object> {
        let mut all = self.rest.clone();
        all.push(Object::Secret(self.certs.clone()));
        all
    }
}

/// Applies an upload; results in the order of `rest`, then `certs`.
pub async fn upload(
    client: &kube::Client,
    upload: &Upload,
    limit: Duration,
) -> Result<Vec<Applied>> {
    let mut results = apply::apply_all(client, &upload.rest, limit).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    let owner = secrets.get(&upload.owner).await?;
    let mut certs = upload.certs.clone();
    certs.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Secret".into(),
        name: upload.owner.clone(),
        uid: owner.metadata.uid.unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    results.push(Object::Secret(certs).apply(client, limit).await?);
    Ok(results)
}

/// (data key, file under the PKI dir) for a stacked-etcd control plane; with external etcd the
/// etcd entries are the configured client files instead. Last kubeforge's own entry, the
/// EncryptionConfiguration (docs/security.md), which only clusters that encrypt Secrets have;
/// kubeadm reads the keys it knows and ignores it.
pub fn files(pki: &Path, external: Option<&crate::config::ExternalEtcd>) -> Vec<(String, PathBuf)> {
    let mut list: Vec<(String, PathBuf)> = [
        "ca.crt",
        "ca.key",
        "front-proxy-ca.crt",
        "front-proxy-ca.key",
        "sa.key",
        "sa.pub",
    ]
    .iter()
    .map(|f| (f.to_string(), pki.join(f)))
    .collect();
    match external {
        None => {
            list.push(("etcd-ca.crt".into(), pki.join("etcd/ca.crt")));
            list.push(("etcd-ca.key".into(), pki.join("etcd/ca.key")));
        }
        Some(e) => {
            list.push(("external-etcd-ca.crt".into(), PathBuf::from(&e.ca_file)));
            list.push(("external-etcd.crt".into(), PathBuf::from(&e.cert_file)));
            list.push(("external-etcd.key".into(), PathBuf::from(&e.key_file)));
        }
    }
    list.push((crate::encryption::FILE.into(), crate::encryption::path(pki)));
    list
}

fn sealing_key(key: &CertificateKey) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.bytes()).expect("a 32-byte AES-256 key"))
}

pub fn encrypt(key: &CertificateKey, plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill(&mut nonce);
    let mut sealed = plaintext.to_vec();
    sealing_key(key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            &mut sealed,
        )
        .expect("AES-GCM sealing of an in-memory buffer");
    let mut out = nonce.to_vec();
    out.extend(sealed);
    out
}

pub fn decrypt(key: &CertificateKey, data: &[u8]) -> Result<Vec<u8>> {
    if data.len() < NONCE_LEN {
        bail!("an encrypted kubeadm-certs value is too short");
    }
    let (nonce, sealed) = data.split_at(NONCE_LEN);
    let mut buffer = sealed.to_vec();
    let nonce = Nonce::try_assume_unique_for_key(nonce).expect("NONCE_LEN bytes");
    let plain = sealing_key(key)
        .open_in_place(nonce, Aad::empty(), &mut buffer)
        .map_err(|_| {
            anyhow!("the certificate key does not decrypt kubeadm-certs (wrong or expired key?)")
        })?;
    Ok(plain.to_vec())
}

/// `kube-system/kubeadm-certs` read with `client` (a joining node's bootstrap token) and
/// decrypted with `key`: every value is decrypted before any is returned, so a wrong key writes
/// nothing.
pub async fn download(
    client: kube::Client,
    key: &CertificateKey,
) -> Result<Vec<(String, Vec<u8>)>> {
    let secrets: Api<Secret> = Api::namespaced(client, "kube-system");
    let Some(secret) = secrets.get_opt("kubeadm-certs").await? else {
        bail!("kube-system/kubeadm-certs does not exist: the uploaded certificates have expired (they live 2 hours) or were never uploaded; on a control-plane node run `kubeforge token create --print-join-command --upload-certs` for a fresh line");
    };
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| {
            if value.0.is_empty() {
                return Ok((name, Vec::new()));
            }
            decrypt(key, &value.0)
                .map(|plain| (name.clone(), plain))
                .with_context(|| format!("kube-system/kubeadm-certs, {name}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;

    #[test]
    fn round_trip_and_wrong_key() {
        let key = CertificateKey::parse(&"07".repeat(32)).unwrap();
        let sealed = encrypt(&key, b"secret pem");
        assert_eq!(sealed.len(), NONCE_LEN + 10 + 16);
        assert_eq!(decrypt(&key, &sealed).unwrap(), b"secret pem");
        let other = CertificateKey::parse(&"08".repeat(32)).unwrap();
        let e = decrypt(&other, &sealed).unwrap_err().to_string();
        assert!(e.contains("wrong or expired key"), "{e}");
    }

    /// The EncryptionConfiguration travels with the keys when the node has one (sealed like
    /// them, opened to the same bytes), and is left out, not uploaded empty, when it has none.
    #[test]
    fn the_encryption_config_is_uploaded_only_when_present() {
        let pki = Path::new("/pki");
        let names: Vec<String> = files(pki, None).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.last().unwrap(), crate::encryption::FILE);
        assert_eq!(
            files(pki, None).last().unwrap().1,
            Path::new("/pki/encryption-config.yaml")
        );
        let key = CertificateKey::generate();
        let config = b"apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n";
        let now = OffsetDateTime::now_utc();
        let with = |content: &[u8]| {
            let list = vec![
                ("ca.crt".to_string(), b"ca".to_vec()),
                (crate::encryption::FILE.to_string(), content.to_vec()),
            ];
            upload_objects(&list, &key, now)
                .unwrap()
                .certs
                .data
                .unwrap()
        };
        let data = with(config);
        let sealed = &data[crate::encryption::FILE].0;
        assert_ne!(sealed.as_slice(), config.as_slice());
        assert_eq!(decrypt(&key, sealed).unwrap(), config);
        let data = with(b"");
        assert_eq!(data.keys().collect::<Vec<_>>(), ["ca.crt"]);
    }

    /// Key bytes 0..32, nonce bytes 100..112, stored as kubeadm stores it (nonce || ciphertext ||
    /// tag). Computed outside kubeforge with Python's `cryptography` (OpenSSL's AES-GCM):
    /// `nonce + AESGCM(key).encrypt(nonce, PLAIN, None)`.
    const VECTOR: &str = "ZGVmZ2hpamtsbW5vZTbzS1SrE9l3LH+rnzc+tASLRUvfKd5fivyBQpDWxy3yhjKnKRi2KdDeVXqzBuqMXgnMrmYDAmmutIH7wqyIgADDNz3VV3rHbwN++9GAg1U=";
    const PLAIN: &[u8] = b"-----BEGIN CERTIFICATE-----\nkubeforge\n-----END CERTIFICATE-----\n";

    fn vector_key() -> CertificateKey {
        let bytes: [u8; 32] = std::array::from_fn(|i| i as u8);
        CertificateKey::parse(&hex::encode(bytes)).unwrap()
    }

    #[test]
    fn decrypts_a_value_sealed_elsewhere() {
        let sealed = STANDARD.decode(VECTOR).unwrap();
        assert_eq!(decrypt(&vector_key(), &sealed).unwrap(), PLAIN);
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert!(decrypt(&vector_key(), &tampered).is_err());
    }

    /// The other direction: what kubeforge seals, an independent AES-GCM (Python's
    /// `cryptography`) opens, reading the nonce from the first 12 bytes as kubeadm does.
    #[test]
    fn sealed_values_open_elsewhere() {
        let key = vector_key();
        let sealed = encrypt(&key, PLAIN);
        let script = r#"
import base64, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key, data = bytes(range(32)), base64.b64decode(sys.argv[1])
sys.stdout.write(AESGCM(key).decrypt(data[:12], data[12:], None).decode())
"#;
        let out = std::process::Command::new("python3")
            .args(["-c", script, &STANDARD.encode(&sealed)])
            .output()
            .expect("python3 (scripts/test.sh installs it with cryptography)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, PLAIN);
    }

    /// The other fixed vector: what real kubeadm v1.35.6 uploaded (tests/vectors/kubeadm-certs.json).
    #[test]
    fn decrypts_what_kubeadm_uploaded() {
        let vector: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/vectors/kubeadm-certs.json")).unwrap();
        let key = CertificateKey::parse(vector["certificateKey"].as_str().unwrap()).unwrap();
        assert_eq!(key, vector_key());
        let sealed = STANDARD.decode(vector["sealed"].as_str().unwrap()).unwrap();
        let plain = decrypt(&key, &sealed).unwrap();
        assert_eq!(plain, vector["plain"].as_str().unwrap().as_bytes());
        assert!(plain.starts_with(b"-----BEGIN CERTIFICATE-----"));
    }
}
