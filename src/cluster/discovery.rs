//! Discovery (contract 7.1): how a joining node comes to trust the cluster. Token discovery
//! fetches `kube-public/cluster-info` anonymously, checks the bootstrapsigner's signature with
//! the token, pins the CA by the SHA-256 of its SubjectPublicKeyInfo, then fetches it again over
//! TLS verified with that CA. File discovery takes a kubeconfig's cluster as given. Each way of
//! failing has its own error, given at once; only an unreachable server is retried.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use crate::cluster::token;
use crate::config::join::{Discovery, JoinRequest, Trust};
use crate::config::Token;
use crate::kubeconfig::Kubeconfig;

/// What discovery yields: the API server a joining node talks to, and the CA it trusts.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterInfo {
    pub server: String,
    pub ca_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cluster-info in {endpoint} carries no signatures at all: the cluster has no bootstrap token with the signing usage, or the controller-manager's bootstrapsigner is not running")]
    NotSigned { endpoint: String },
    #[error("cluster-info in {endpoint} is not signed for token ID {id:?}: the token is unknown to this cluster or has expired (create one with `kubeforge token create` on a control-plane node)")]
    UnknownToken { endpoint: String, id: String },
    #[error("the signature of cluster-info in {endpoint} does not verify with the token: either the token's secret half is wrong, or cluster-info was changed on the way — the server is not trusted")]
    BadSignature { endpoint: String },
    #[error("the CA in cluster-info from {endpoint} has public key hash {found}, which none of the --discovery-token-ca-cert-hash values ({pinned}) match — the server is not trusted")]
    PinMismatch {
        endpoint: String,
        found: String,
        pinned: String,
    },
    #[error("the API server at {endpoint} refuses the token ID {id:?}: it has expired or was deleted (its signature in cluster-info is removed shortly); create a new one with `kubeforge token create`")]
    ExpiredToken { endpoint: String, id: String },
    #[error("cluster-info from {endpoint} changed between the unverified and the verified fetch — the server is not trusted")]
    Changed { endpoint: String },
}

fn cluster_info_url(endpoint: &str) -> String {
    format!("https://{endpoint}/api/v1/namespaces/kube-public/configmaps/cluster-info")
}

/// GETs cluster-info, retrying while the server cannot be reached, until `limit`.
async fn fetch(client: &reqwest::Client, endpoint: &str, limit: Duration) -> Result<Value> {
    let start = Instant::now();
    loop {
        let attempt = async {
            let response = client.get(cluster_info_url(endpoint)).send().await?;
            let status = response.status();
            let bytes = response.bytes().await?;
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            Ok::<_, reqwest::Error>((status, body))
        };
        match attempt.await {
            Ok((status, body)) if status.is_success() => return Ok(body),
            Ok((status, body)) if status.as_u16() == 404 => {
                bail!("{endpoint} has no kube-public/cluster-info ConfigMap: is it a cluster set up by kubeadm or kubeforge (bootstrap-token phase)? {}", body["message"].as_str().unwrap_or_default())
            }
            Ok((status, body)) if status.as_u16() == 401 || status.as_u16() == 403 => {
                bail!(
                    "{endpoint} does not let anonymous clients read cluster-info ({status}): {}",
                    body["message"].as_str().unwrap_or_default()
                )
            }
            Ok((status, _)) if start.elapsed() >= limit => {
                bail!("{endpoint} answered {status} for cluster-info until the discovery timeout ({limit:?})")
            }
            Err(e) if start.elapsed() >= limit => {
                bail!("cannot reach {endpoint} within the discovery timeout ({limit:?}): {e}")
            }
            Ok((status, _)) => tracing::info!("cluster-info from {endpoint}: {status}, retrying"),
            Err(e) => tracing::info!("cluster-info from {endpoint}: {e}, retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub(crate) fn http(ca_pem: Option<&str>) -> Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10));
    let builder = match ca_pem {
        // The first fetch trusts nothing it receives until the signature and the pin hold.
        None => builder.tls_danger_accept_invalid_certs(true),
        Some(pem) => builder.tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes())?]),
    };
    Ok(builder.build()?)
}

/// The single cluster of a cluster-info kubeconfig.
pub fn cluster_of(kubeconfig: &str, origin: &str) -> Result<ClusterInfo> {
    let conf = Kubeconfig::parse(kubeconfig.as_bytes())
        .map_err(|e| anyhow!("{origin}: not a kubeconfig: {e}"))?;
    let server = conf
        .server()
        .ok_or_else(|| anyhow!("{origin}: the kubeconfig names no server"))?
        .to_string();
    let ca_pem = conf
        .ca_pem()
        .ok_or_else(|| anyhow!("{origin}: the kubeconfig has no certificate-authority-data"))?;
    Ok(ClusterInfo { server, ca_pem })
}

/// Whether the API server (TLS verified with the CA of `cluster`) still authenticates `token`:
/// Some(false) on 401, None when it cannot be asked.
async fn token_authenticates(
    client: &reqwest::Client,
    endpoint: &str,
    token: &Token,
) -> Option<bool> {
    let response = client
        .post(format!(
            "https://{endpoint}/apis/authentication.k8s.io/v1/selfsubjectreviews"
        ))
        .bearer_auth(token.to_string())
        .header("Content-Type", "application/json")
        .body(r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#)
        .send()
        .await
        .ok()?;
    match response.status().as_u16() {
        401 => Some(false),
        s if s < 300 => Some(true),
        _ => None,
    }
}

/// The CA of a cluster-info kubeconfig checked against the pins (any CA when unpinned).
fn check_pin(cluster: &ClusterInfo, trust: &Trust, endpoint: &str) -> Result<()> {
    if let Trust::Pins(pins) = trust {
        let der = pem::parse(&cluster.ca_pem)
            .map_err(|e| anyhow!("cluster-info from {endpoint}: the CA: {e}"))?
            .into_contents();
        let found = token::ca_pin(&der)?;
        if !pins.contains(&found) {
            bail!(DiscoveryError::PinMismatch {
                endpoint: endpoint.into(),
                found,
                pinned: pins.join(", "),
            });
        }
    }
    Ok(())
}

/// What a cluster-info ConfigMap says once read and checked (without the network).
#[derive(Debug)]
pub enum ClusterInfoSays {
    /// Signed for the token, the signature verified, the CA pinned.
    Signed {
        kubeconfig: String,
        cluster: ClusterInfo,
    },
    /// Not signed for the token (yet); `signed_at_all`: for other tokens.
    NotSignedFor {
        cluster: ClusterInfo,
        signed_at_all: bool,
    },
}

/// cluster-info as fetched from `endpoint` (the ConfigMap's JSON, Null when it was not JSON):
/// its kubeconfig read, its CA checked against the pins and its signature for `token` verified.
pub fn read_cluster_info(
    config_map: &Value,
    endpoint: &str,
    token: &Token,
    trust: &Trust,
) -> Result<ClusterInfoSays> {
    let data = config_map["data"].as_object().cloned().unwrap_or_default();
    let kubeconfig = data
        .get("kubeconfig")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("cluster-info from {endpoint} has no kubeconfig key"))?
        .to_string();
    let cluster = cluster_of(&kubeconfig, &format!("cluster-info from {endpoint}"))?;
    check_pin(&cluster, trust, endpoint)?;
    let key = format!("jws-kubeconfig-{}", token.id());
    let Some(jws) = data.get(&key).and_then(Value::as_str) else {
        let signed_at_all = data.keys().any(|k| k.starts_with("jws-kubeconfig-"));
        return Ok(ClusterInfoSays::NotSignedFor {
            cluster,
            signed_at_all,
        });
    };
    if !token::jws_is_valid(jws, &kubeconfig, token) {
        bail!(DiscoveryError::BadSignature {
            endpoint: endpoint.into()
        });
    }
    Ok(ClusterInfoSays::Signed {
        kubeconfig,
        cluster,
    })
}

/// kubeadm's token discovery against `endpoint` (`host:port`). A cluster-info not signed for the
/// token yet (a join right after init, before the controller-manager's bootstrapsigner ran) is
/// waited for, up to `limit`, when the API server — over TLS verified with the pinned CA — says
/// the token is valid; an unknown or expired token is an error at once. The token is never sent
/// to a server whose CA is not pinned.
pub async fn by_token(
    endpoint: &str,
    token: &Token,
    trust: &Trust,
    limit: Duration,
) -> Result<ClusterInfo> {
    let start = Instant::now();
    let insecure = http(None)?;
    let mut waiting = false;
    let (kubeconfig, cluster) = loop {
        let unverified = fetch(&insecure, endpoint, limit).await?;
        let (cluster, signed_at_all) = match read_cluster_info(&unverified, endpoint, token, trust)?
        {
            ClusterInfoSays::Signed {
                kubeconfig,
                cluster,
            } => break (kubeconfig, cluster),
            ClusterInfoSays::NotSignedFor {
                cluster,
                signed_at_all,
            } => (cluster, signed_at_all),
        };
        let unsigned = || {
            let endpoint = endpoint.to_string();
            if signed_at_all {
                DiscoveryError::UnknownToken {
                    endpoint,
                    id: token.id().into(),
                }
            } else {
                DiscoveryError::NotSigned { endpoint }
            }
        };
        if matches!(trust, Trust::Pins(_)) {
            let verified = http(Some(&cluster.ca_pem))?;
            if token_authenticates(&verified, endpoint, token).await == Some(false) {
                bail!(DiscoveryError::UnknownToken {
                    endpoint: endpoint.into(),
                    id: token.id().into()
                });
            }
        }
        if start.elapsed() >= limit {
            bail!(unsigned());
        }
        if !waiting {
            tracing::warn!(
                "cluster-info is not signed for token ID {} yet; waiting for the controller-manager's bootstrapsigner",
                token.id()
            );
            waiting = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let kubeconfig = kubeconfig.as_str();
    // Again, now over TLS verified with the CA just trusted: the same content, from a server
    // that holds that CA's certificate.
    let verified_client = http(Some(&cluster.ca_pem))?;
    let verified = fetch(&verified_client, endpoint, limit).await?;
    if verified["data"]["kubeconfig"].as_str() != Some(kubeconfig) {
        bail!(DiscoveryError::Changed {
            endpoint: endpoint.into()
        });
    }
    // A signature outlives its token by up to a resync of the bootstrapsigner: ask the API
    // server whether the token still authenticates.
    if token_authenticates(&verified_client, endpoint, token).await == Some(false) {
        bail!(DiscoveryError::ExpiredToken {
            endpoint: endpoint.into(),
            id: token.id().into()
        });
    }
    Ok(cluster)
}

/// The cluster a join trusts, by token or file discovery.
pub async fn discover(request: &JoinRequest) -> Result<ClusterInfo> {
    match &request.discovery {
        Discovery::File(file) => by_file(file),
        Discovery::Token { endpoint, trust } => {
            by_token(endpoint, &request.token, trust, request.discovery_timeout).await
        }
    }
}

/// The ClusterConfiguration and the KubeletConfiguration the control plane uploaded, read with
/// the bootstrap token (kubeadm's RBAC lets bootstrappers read both).
pub async fn download_config(client: kube::Client) -> Result<crate::config::join::StoredConfig> {
    Ok(crate::config::join::StoredConfig {
        cluster: super::stored::cluster_configuration(&client).await?,
        kubelet: super::stored::kubelet_configuration(&client).await?,
        endpoint: super::stored::endpoint_document(&client).await?,
        security: super::stored::security_document(&client).await?,
    })
}

/// File discovery: a kubeconfig whose cluster is trusted as given.
pub fn by_file(path: &std::path::Path) -> Result<ClusterInfo> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::BadInput(format!("--discovery-file {}: {e}", path.display())))?;
    cluster_of(&text, &format!("--discovery-file {}", path.display()))
}

#[cfg(test)]
mod tests {
    //! Against tests/standin/apiserver.py serving cluster-info, signed by the stand-in's own
    //! (Python hmac) bootstrapsigner: kubeforge's verification, not the signer, is under test.
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde_json::json;
    use std::io::BufRead;

    struct Cluster {
        _dir: tempfile::TempDir,
        child: std::process::Child,
        endpoint: String,
        ca_pem: String,
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn token_secret(id: &str, secret: &str, expiration: Option<&str>) -> Value {
        let mut data = json!({
            "token-id": STANDARD.encode(id),
            "token-secret": STANDARD.encode(secret),
            "usage-bootstrap-signing": STANDARD.encode("true"),
            "usage-bootstrap-authentication": STANDARD.encode("true"),
        });
        if let Some(e) = expiration {
            data["expiration"] = json!(STANDARD.encode(e));
        }
        json!({"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
               "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
               "data": data})
    }

    /// A stand-in API server on 127.0.0.1 with its own CA and `tokens`.
    fn cluster(tokens: Vec<Value>, sign: bool, tamper: bool) -> Cluster {
        cluster_with(tokens, json!({ "sign": sign, "tamper": tamper }))
    }

    fn cluster_with(tokens: Vec<Value>, behaviour: Value) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(ca.der(), &ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let serving = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        for (name, text) in [
            ("ca.crt", ca.pem()),
            ("api.crt", serving.pem()),
            ("api.key", key.serialize_pem()),
        ] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = format!("127.0.0.1:{port}");
        let kubeconfig = format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://{endpoint}\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\nusers: null\n",
            STANDARD.encode(ca.pem())
        );
        let mut objects = tokens;
        objects.push(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cluster-info", "namespace": "kube-public"},
            "data": {"kubeconfig": kubeconfig}}));
        let file = |n: &str| dir.path().join(n).display().to_string();
        let mut config = json!({
            "api": {"host": "127.0.0.1", "port": port, "cert": file("api.crt"), "key": file("api.key"), "ca": file("ca.crt")},
            "objects": objects,
        });
        config
            .as_object_mut()
            .unwrap()
            .extend(behaviour.as_object().unwrap().clone());
        std::fs::write(dir.path().join("standin.json"), config.to_string()).unwrap();
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/standin/apiserver.py");
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .arg(dir.path().join("standin.json"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Cluster {
            _dir: dir,
            child,
            endpoint,
            ca_pem: ca.pem(),
        }
    }

    fn pin(c: &Cluster) -> String {
        token::ca_pin(&pem::parse(&c.ca_pem).unwrap().into_contents()).unwrap()
    }

    fn discover(c: &Cluster, token: &str, trust: Trust) -> Result<ClusterInfo> {
        let token = Token::parse(token).unwrap();
        crate::block_on(by_token(
            &c.endpoint,
            &token,
            &trust,
            Duration::from_secs(5),
        ))
    }

    fn error_of(result: Result<ClusterInfo>) -> DiscoveryError {
        let e = result.expect_err("discovery trusted it");
        e.downcast::<DiscoveryError>()
            .unwrap_or_else(|e| panic!("not a discovery error: {e:#}"))
    }

    const GOOD: &str = "abcdef.0123456789abcdef";

    #[test]
    fn a_good_token_and_pin_are_trusted_and_every_failure_is_named() {
        let c = cluster(
            vec![token_secret("abcdef", "0123456789abcdef", None)],
            true,
            false,
        );
        let found = discover(&c, GOOD, Trust::Pins(vec!["sha256:00".into(), pin(&c)])).unwrap();
        assert_eq!(found.server, format!("https://{}", c.endpoint));
        assert_eq!(found.ca_pem.trim(), c.ca_pem.trim());
        assert!(discover(&c, GOOD, Trust::Unpinned).is_ok());

        let wrong_pin = format!("sha256:{}", "ab".repeat(32));
        assert!(matches!(
            error_of(discover(&c, GOOD, Trust::Pins(vec![wrong_pin]))),
            DiscoveryError::PinMismatch { .. }
        ));
        assert!(matches!(
            error_of(discover(
                &c,
                "zzzzzz.0123456789abcdef",
                Trust::Pins(vec![pin(&c)])
            )),
            DiscoveryError::UnknownToken { .. }
        ));
        assert!(matches!(
            error_of(discover(
                &c,
                "abcdef.0000000000000000",
                Trust::Pins(vec![pin(&c)])
            )),
            DiscoveryError::BadSignature { .. }
        ));
    }

    #[test]
    fn tampered_unsigned_and_expired_are_refused() {
        let tampered = cluster(
            vec![token_secret("abcdef", "0123456789abcdef", None)],
            true,
            true,
        );
        let p = pin(&tampered);
        assert!(matches!(
            error_of(discover(&tampered, GOOD, Trust::Pins(vec![p]))),
            DiscoveryError::BadSignature { .. }
        ));
        let unsigned = cluster(
            vec![token_secret("abcdef", "0123456789abcdef", None)],
            false,
            false,
        );
        let p = pin(&unsigned);
        assert!(matches!(
            error_of(discover(&unsigned, GOOD, Trust::Pins(vec![p]))),
            DiscoveryError::NotSigned { .. }
        ));
        let expired = cluster(
            vec![token_secret(
                "abcdef",
                "0123456789abcdef",
                Some("2020-01-01T00:00:00Z"),
            )],
            true,
            false,
        );
        let p = pin(&expired);
        assert!(matches!(
            error_of(discover(&expired, GOOD, Trust::Pins(vec![p]))),
            DiscoveryError::ExpiredToken { .. }
        ));
        // The errors never show the token's secret half.
        let e = discover(&expired, GOOD, Trust::Unpinned).unwrap_err();
        assert!(!format!("{e:#}").contains("0123456789abcdef"));
    }

    /// A join right after init: the token is valid but the bootstrapsigner has not signed yet.
    #[test]
    fn a_signature_that_comes_later_is_waited_for() {
        let c = cluster_with(
            vec![token_secret("abcdef", "0123456789abcdef", None)],
            json!({ "sign_after": 1.5 }),
        );
        let start = std::time::Instant::now();
        let found = discover(&c, GOOD, Trust::Pins(vec![pin(&c)])).unwrap();
        assert_eq!(found.server, format!("https://{}", c.endpoint));
        assert!(start.elapsed() >= Duration::from_millis(1400));
        // An unknown token is not waited for: the API server refuses it at once.
        let start = std::time::Instant::now();
        let c = cluster_with(
            vec![token_secret("abcdef", "0123456789abcdef", None)],
            json!({ "sign_after": 30 }),
        );
        assert!(matches!(
            error_of(discover(
                &c,
                "zzzzzz.0123456789abcdef",
                Trust::Pins(vec![pin(&c)])
            )),
            DiscoveryError::UnknownToken { .. }
        ));
        assert!(start.elapsed() < Duration::from_secs(3));
    }
}
