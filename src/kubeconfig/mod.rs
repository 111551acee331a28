//! kubeconfig files in kubeadm's exact shape (contract 2.1): one cluster, one context, one user,
//! CA and client credentials embedded; and the node's kubeconfigs, planned check-then-write.

pub mod plan;
pub mod user;

use anyhow::{Context, Result};
use base64::Engine;
use serde::{Deserialize, Serialize};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, Serialize, Deserialize)]
pub struct Kubeconfig {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub clusters: Vec<NamedCluster>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub contexts: Vec<NamedContext>,
    #[serde(rename = "current-context", default)]
    pub current_context: String,
    pub kind: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub users: Vec<NamedUser>,
}

/// cluster-info's kubeconfig writes `contexts: null` and `users: null`.
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NamedCluster {
    pub cluster: Cluster,
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Cluster {
    #[serde(rename = "certificate-authority-data")]
    pub certificate_authority_data: String,
    pub server: String,
    /// The name the server's certificate is checked for, when `server` is not in it (a
    /// node-local balancer on 127.0.0.1).
    #[serde(
        rename = "tls-server-name",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tls_server_name: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NamedContext {
    pub context: ContextRef,
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ContextRef {
    pub cluster: String,
    pub user: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NamedUser {
    pub name: String,
    pub user: User,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct User {
    #[serde(rename = "client-certificate", skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(
        rename = "client-certificate-data",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_certificate_data: Option<String>,
    #[serde(rename = "client-key", skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    #[serde(rename = "client-key-data", skip_serializing_if = "Option::is_none")]
    pub client_key_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl Kubeconfig {
    /// A kubeconfig with an embedded client certificate and key.
    pub fn with_client_cert(
        cluster_name: &str,
        server: &str,
        ca_pem: &str,
        user_name: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Self {
        Self::new(
            cluster_name,
            server,
            ca_pem,
            user_name,
            User {
                client_certificate_data: Some(B64.encode(cert_pem)),
                client_key_data: Some(B64.encode(key_pem)),
                ..User::default()
            },
        )
    }

    pub fn new(
        cluster_name: &str,
        server: &str,
        ca_pem: &str,
        user_name: &str,
        user: User,
    ) -> Self {
        let context = format!("{user_name}@{cluster_name}");
        Kubeconfig {
            api_version: "v1".into(),
            clusters: vec![NamedCluster {
                cluster: Cluster {
                    certificate_authority_data: B64.encode(ca_pem),
                    server: server.into(),
                    tls_server_name: None,
                },
                name: cluster_name.into(),
            }],
            contexts: vec![NamedContext {
                context: ContextRef {
                    cluster: cluster_name.into(),
                    user: user_name.into(),
                },
                name: context.clone(),
            }],
            current_context: context,
            kind: "Config".into(),
            users: vec![NamedUser {
                name: user_name.into(),
                user,
            }],
        }
    }

    /// Points every user at a client certificate and key in `file` instead of embedded ones
    /// (kubelet.conf once the kubelet rotates its own certificate).
    pub fn use_client_certificate_file(&mut self, file: &str) {
        for named in &mut self.users {
            named.user.client_certificate = Some(file.to_string());
            named.user.client_key = Some(file.to_string());
            named.user.client_certificate_data = None;
            named.user.client_key_data = None;
        }
    }

    pub fn parse(text: &[u8]) -> Result<Self> {
        serde_yaml::from_slice(text).context("parsing the kubeconfig")
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("a kubeconfig always serializes")
    }

    /// Points every cluster at `server`, its certificate checked for `tls_server_name`.
    pub fn set_server(&mut self, server: &str, tls_server_name: &str) {
        for named in &mut self.clusters {
            named.cluster.server = server.into();
            named.cluster.tls_server_name = Some(tls_server_name.into());
        }
    }

    pub fn server(&self) -> Option<&str> {
        self.clusters.first().map(|c| c.cluster.server.as_str())
    }

    pub fn ca_pem(&self) -> Option<String> {
        decode(&self.clusters.first()?.cluster.certificate_authority_data)
    }

    pub fn client_cert_pem(&self) -> Option<String> {
        decode(self.users.first()?.user.client_certificate_data.as_ref()?)
    }

    pub fn client_key_pem(&self) -> Option<String> {
        decode(self.users.first()?.user.client_key_data.as_ref()?)
    }
}

impl Kubeconfig {
    /// The embedded client certificate and key as PEM text, each None when the file has none; an
    /// error names the one that is there but is not base64 of text (a file cut short).
    pub fn client_credentials(&self) -> Result<(Option<String>, Option<String>)> {
        let Some(user) = self.users.first().map(|u| &u.user) else {
            return Ok((None, None));
        };
        let read = |field: &str, data: &Option<String>| match data {
            None => Ok(None),
            Some(b64) => decode(b64)
                .map(Some)
                .ok_or_else(|| anyhow::anyhow!("its {field} is not base64 of PEM text")),
        };
        Ok((
            read("client-certificate-data", &user.client_certificate_data)?,
            read("client-key-data", &user.client_key_data)?,
        ))
    }
}

fn decode(b64: &str) -> Option<String> {
    String::from_utf8(B64.decode(b64).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_in_kubeadms_order() {
        let k = Kubeconfig::with_client_cert(
            "kubernetes",
            "https://192.0.2.2:6443",
            "CA",
            "kubernetes-admin",
            "CERT",
            "KEY",
        );
        let yaml = k.to_yaml();
        let keys: Vec<_> = yaml
            .lines()
            .filter(|l| !l.starts_with(' ') && !l.starts_with('-'))
            .map(|l| l.split(':').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "apiVersion",
                "clusters",
                "contexts",
                "current-context",
                "kind",
                "users"
            ]
        );
        assert!(yaml.contains("- cluster:\n    certificate-authority-data: Q0E=\n    server: https://192.0.2.2:6443\n  name: kubernetes\n"));
        assert!(yaml.contains("current-context: kubernetes-admin@kubernetes\n"));
        let back = Kubeconfig::parse(yaml.as_bytes()).unwrap();
        assert_eq!(back.client_key_pem().unwrap(), "KEY");
    }
}
