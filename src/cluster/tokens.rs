//! `kubeforge token create|list|delete|generate`: bootstrap tokens on a running cluster, through
//! the admin kubeconfig. The whole token is printed only by `create`, `generate` and `list`, the
//! commands whose point is to show it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::certs_secret;
use super::objects::{self, TokenSecret};
use super::token::{self, Token};
use crate::cli::TokenCreate;
use crate::config::GoDuration;
use crate::output::Output;
use crate::BadInput;

/// How long `create` and the API calls wait for the server.
const API_TIMEOUT: Duration = Duration::from_secs(60);

/// kubeadm's rules for `--usages` and `--groups` (bad input, exit 2).
fn check_usages_and_groups(usages: &[String], groups: &[String]) -> Result<()> {
    if let Some(u) = usages.iter().find(|u| !token::USAGES.contains(&u.as_str())) {
        bail!(BadInput(format!(
            "--usages: unknown usage {u:?} (valid: signing, authentication)"
        )));
    }
    if let Some(g) = groups.iter().find(|g| !token::is_token_group(g)) {
        bail!(BadInput(format!(
            "--groups: {g:?} must match system:bootstrappers:[a-z0-9:-]{{0,255}}[a-z0-9]"
        )));
    }
    if !groups.is_empty() && !usages.iter().any(|u| u == "authentication") {
        bail!(BadInput(
            "--groups needs the authentication usage (--usages authentication)".into()
        ));
    }
    Ok(())
}

/// The API endpoint (`host:port`) and the CA pin of the cluster a kubeconfig reaches: what a
/// join command needs.
fn endpoint_and_pin(kubeconfig: &Path) -> Result<(String, String)> {
    let cluster = crate::join::discovery::by_file(kubeconfig)?;
    let der = pem::parse(&cluster.ca_pem)
        .with_context(|| format!("{}: the cluster CA", kubeconfig.display()))?
        .into_contents();
    Ok((
        cluster.server.trim_start_matches("https://").to_string(),
        token::ca_pin(&der)?,
    ))
}

/// The certificates to upload: from `cert_dir`, else from the certificatesDir (and external etcd
/// files) of the ClusterConfiguration stored in the cluster.
async fn certificate_files(
    client: &kube::Client,
    cert_dir: Option<&Path>,
    kubernetes_dir: &Path,
) -> Result<Vec<(String, Vec<u8>)>> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let stored = maps
        .get("kubeadm-config")
        .await
        .context("reading kube-system/kubeadm-config (the cluster's ClusterConfiguration)")?;
    let text = stored
        .data
        .unwrap_or_default()
        .remove("ClusterConfiguration")
        .ok_or_else(|| anyhow!("kube-system/kubeadm-config has no ClusterConfiguration key"))?;
    let cfg = crate::config::load_str(
        &text,
        "kube-system/kubeadm-config",
        &Default::default(),
        kubernetes_dir,
    )?;
    let pki = cert_dir.map_or_else(
        || PathBuf::from(&cfg.cluster.certificates_dir),
        Path::to_path_buf,
    );
    certs_secret::files(&pki, cfg.cluster.etcd.external.as_ref())
        .into_iter()
        .map(|(name, path)| match std::fs::read(&path) {
            Ok(bytes) => Ok((name, bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && name.ends_with(".key") => {
                Ok((name, Vec::new()))
            }
            Err(e) => Err(anyhow!("reading {}: {e}", path.display())),
        })
        .collect()
}

pub fn create(
    req: &TokenCreate,
    kubeconfig: &Path,
    kubernetes_dir: &Path,
    out: Output,
) -> Result<()> {
    let token = match &req.token {
        Some(t) => Token::parse(t).map_err(|e| BadInput(format!("token: {e}")))?,
        None => Token::generate(),
    };
    let ttl = GoDuration::parse(&req.ttl).map_err(|e| BadInput(format!("--ttl: {e}")))?;
    check_usages_and_groups(&req.usages, &req.groups)?;
    let given_key = req
        .certificate_key
        .as_deref()
        .map(|k| {
            certs_secret::parse_key(k)
                .map(|_| k.to_string())
                .map_err(|e| BadInput(format!("--certificate-key: {e}")))
        })
        .transpose()?;
    let join = req
        .print_join_command
        .then(|| endpoint_and_pin(kubeconfig))
        .transpose()?;
    let now = OffsetDateTime::now_utc();
    let secret = objects::token_secret(&TokenSecret {
        id: token.id().into(),
        secret: token.secret().into(),
        description: req.description.clone(),
        expiration: (!ttl.0.is_zero()).then(|| (now + ttl.0).format(&Rfc3339).expect("RFC 3339")),
        usages: req.usages.clone(),
        groups: req.groups.clone(),
    })?;
    let rt = crate::runtime()?;
    let key = rt.block_on(async {
        let client = crate::health::client(kubeconfig, None).await?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
        let secret: Secret = serde_json::from_value(secret)?;
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                bail!(BadInput(format!(
                    "a bootstrap token with ID {:?} already exists",
                    token.id()
                )))
            }
            Err(e) => bail!("creating the bootstrap token {:?}: {e}", token.id()),
        }
        let key = if req.upload_certs {
            let key_hex = given_key.unwrap_or_else(token::generate_certificate_key);
            let files = certificate_files(&client, req.cert_dir.as_deref(), kubernetes_dir).await?;
            let upload =
                certs_secret::upload_objects(&files, &certs_secret::parse_key(&key_hex)?, now)?;
            certs_secret::upload(&client, &upload, API_TIMEOUT).await?;
            Some(key_hex)
        } else {
            given_key
        };
        if req.print_join_command {
            // The printed command must work at once: wait for the signed cluster-info.
            wait_for_signature(&client, &token, API_TIMEOUT).await?;
        }
        Ok::<_, anyhow::Error>(key)
    })?;
    let lines =
        join.map(|(endpoint, hash)| join_commands(&endpoint, &token, &hash, key.as_deref()));
    if out.json() {
        out.print_json(&json!({
            "token": token.to_string(),
            "certificateKey": key,
            "joinCommand": lines.as_ref().map(|(worker, _)| worker.replace(" \\\n\t", " ")),
            "controlPlaneJoinCommand": lines.as_ref().and_then(|(_, cp)| cp.as_ref().map(|c| c.replace(" \\\n\t", " "))),
        }));
        return Ok(());
    }
    match lines {
        Some((_, Some(control_plane))) => println!("{}", control_plane.replace(" \\\n\t", " ")),
        Some((worker, None)) => println!("{}", worker.replace(" \\\n\t", " ")),
        None => println!("{token}"),
    }
    if let (Some(key), false) = (&key, req.print_join_command) {
        println!("[upload-certs] Using certificate key:\n{key}");
    }
    Ok(())
}

/// The worker join command and, with a certificate key, the control-plane one.
pub fn join_commands(
    endpoint: &str,
    token: &Token,
    ca_hash: &str,
    certificate_key: Option<&str>,
) -> (String, Option<String>) {
    let worker = format!(
        "kubeforge join {endpoint} --token {token} \\\n\t--discovery-token-ca-cert-hash {ca_hash}"
    );
    let control_plane = certificate_key
        .map(|key| format!("{worker} \\\n\t--control-plane --certificate-key {key}"));
    (worker, control_plane)
}

/// Waits until the bootstrapsigner has signed cluster-info for `token` and checks the signature
/// itself, so that a printed join command is one that discovery accepts.
pub async fn wait_for_signature(
    client: &kube::Client,
    token: &Token,
    limit: Duration,
) -> Result<()> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-public");
    let key = format!("jws-kubeconfig-{}", token.id());
    let start = Instant::now();
    loop {
        if let Ok(cm) = maps.get("cluster-info").await {
            let data = cm.data.unwrap_or_default();
            if let (Some(jws), Some(kubeconfig)) = (data.get(&key), data.get("kubeconfig")) {
                if token::jws_is_valid(jws, kubeconfig, token) {
                    return Ok(());
                }
                bail!("cluster-info carries a {key} signature that the token does not verify");
            }
        }
        if start.elapsed() > limit {
            bail!("the controller-manager did not sign cluster-info for token ID {} within {limit:?} (is its bootstrapsigner controller enabled?)", token.id());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// kubeadm's TTL column: the time left, rounded down to the largest unit.
fn time_left(expiration: &str, now: OffsetDateTime) -> String {
    let Ok(at) = OffsetDateTime::parse(expiration, &Rfc3339) else {
        return "<invalid>".into();
    };
    let left = (at - now).whole_seconds();
    match left {
        ..=0 => "<invalid>".into(),
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub fn list(kubeconfig: &Path, out: Output) -> Result<()> {
    let rt = crate::runtime()?;
    let items = rt.block_on(async {
        let client = crate::health::client(kubeconfig, None).await?;
        let secrets: Api<Secret> = Api::namespaced(client, "kube-system");
        let list = secrets
            .list(&ListParams::default().fields("type=bootstrap.kubernetes.io/token"))
            .await
            .context("listing bootstrap tokens")?;
        Ok::<_, anyhow::Error>(list.items)
    })?;
    let now = OffsetDateTime::now_utc();
    let mut rows = Vec::new();
    for s in &items {
        let (Some(id), Some(secret)) = (
            token::secret_field(s, "token-id"),
            token::secret_field(s, "token-secret"),
        ) else {
            continue;
        };
        let mut usages: Vec<String> = s
            .data
            .iter()
            .flatten()
            .filter_map(|(k, v)| {
                (v.0 == b"true")
                    .then(|| k.strip_prefix("usage-bootstrap-").map(String::from))
                    .flatten()
            })
            .collect();
        usages.sort();
        let expiration = token::secret_field(s, "expiration");
        rows.push(json!({
            "token": format!("{id}.{secret}"),
            "ttl": expiration.as_deref().map_or("<forever>".into(), |e| time_left(e, now)),
            "expires": expiration.clone().unwrap_or_else(|| "<never>".into()),
            "usages": usages,
            "description": token::secret_field(s, "description").unwrap_or_else(|| "<none>".into()),
            "groups": token::secret_field(s, "auth-extra-groups").unwrap_or_else(|| "<none>".into()),
        }));
    }
    if out.json() {
        out.print_json(&json!({ "tokens": rows }));
        return Ok(());
    }
    let text = |v: &Value| match v {
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        other => other.as_str().unwrap_or_default().to_string(),
    };
    let columns = ["token", "ttl", "expires", "usages", "description", "groups"];
    let headers = [
        "TOKEN",
        "TTL",
        "EXPIRES",
        "USAGES",
        "DESCRIPTION",
        "EXTRA GROUPS",
    ];
    let widths: Vec<usize> = columns
        .iter()
        .zip(headers)
        .map(|(c, h)| {
            rows.iter()
                .map(|r| text(&r[c]).len())
                .fold(h.len(), usize::max)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("   ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in &rows {
        line(columns.iter().map(|c| text(&r[c])).collect());
    }
    Ok(())
}

pub fn delete(ids: &[String], kubeconfig: &Path, out: Output) -> Result<()> {
    let mut checked = Vec::new();
    for given in ids {
        let id = match given.split_once('.') {
            Some(_) => Token::parse(given)
                .map_err(|e| BadInput(format!("token: {e}")))?
                .id()
                .to_string(),
            None if token::is_token_id(given) => given.clone(),
            None => bail!(BadInput(format!(
                "{given:?} is neither a token ID ([a-z0-9]{{6}}) nor a token"
            ))),
        };
        checked.push(id);
    }
    let rt = crate::runtime()?;
    rt.block_on(async {
        let client = crate::health::client(kubeconfig, None).await?;
        let secrets: Api<Secret> = Api::namespaced(client, "kube-system");
        for id in &checked {
            match secrets
                .delete(&format!("bootstrap-token-{id}"), &DeleteParams::default())
                .await
            {
                Ok(_) => out.step(
                    "token",
                    &format!("bootstrap token {id:?} deleted"),
                    json!({ "deleted": id }),
                ),
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    bail!("bootstrap token {id:?} not found")
                }
                Err(e) => bail!("deleting bootstrap token {id:?}: {e}"),
            }
        }
        Ok(())
    })
}
