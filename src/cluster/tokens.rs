//! `kubeforge token create|list|delete|generate`: bootstrap tokens on a running cluster, through
//! the admin kubeconfig. The whole token is printed only by `create`, `generate` and `list`, the
//! commands whose point is to show it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::certs_secret;
use super::objects::{self, TokenSecret};
use super::token;
use crate::config::{self, BootstrapToken, CertificateKey, GoDuration, Token};
use crate::output::Output;
use crate::BadInput;

/// `kubeforge token create`'s request (kubeadm's flags).
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// The token to create; default: a random one.
    pub token: Option<String>,
    pub ttl: String,
    pub usages: Vec<String>,
    pub groups: Vec<String>,
    pub description: String,
    pub print_join_command: bool,
    pub certificate_key: Option<String>,
    pub upload_certs: bool,
    /// Where the certificates to upload are (default: the cluster's certificatesDir).
    pub cert_dir: Option<PathBuf>,
}

/// How long `create` and the API calls wait for the server.
const API_TIMEOUT: Duration = Duration::from_secs(60);

/// kubeadm's rules for `--usages` and `--groups` (bad input, exit 2).
fn check_usages_and_groups(usages: &[String], groups: &[String]) -> Result<()> {
    if let Some(u) = usages
        .iter()
        .find(|u| !config::USAGES.contains(&u.as_str()))
    {
        bail!(BadInput(format!(
            "--usages: unknown usage {u:?} (valid: signing, authentication)"
        )));
    }
    if let Some(g) = groups.iter().find(|g| !config::is_token_group(g)) {
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
    let cluster = super::discovery::by_file(kubeconfig)?;
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
    let text = super::stored::cluster_configuration(client).await?;
    let cfg = config::load_str(
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
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && (name.ends_with(".key") || name == crate::encryption::FILE) =>
            {
                Ok((name, Vec::new()))
            }
            Err(e) => Err(anyhow!("reading {}: {e}", path.display())),
        })
        .collect()
}

pub fn create(
    req: &CreateRequest,
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
        .map(|k| CertificateKey::parse(k).map_err(|e| BadInput(format!("--certificate-key: {e}"))))
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
    let key = crate::block_on(async {
        let client = crate::kube::client(kubeconfig, None).await?;
        create_secret(&client, secret, &token).await?;
        let key = match (req.upload_certs, given_key) {
            (true, given) => {
                let key = given.unwrap_or_else(CertificateKey::generate);
                let files =
                    certificate_files(&client, req.cert_dir.as_deref(), kubernetes_dir).await?;
                let upload = certs_secret::upload_objects(&files, &key, now)?;
                certs_secret::upload(&client, &upload, API_TIMEOUT).await?;
                Some(key)
            }
            (false, given) => given,
        };
        if req.usages.iter().any(|u| u == "signing") {
            sign_cluster_info(&client, &token, API_TIMEOUT).await?;
        }
        if req.print_join_command {
            // The printed command must work at once: its signature is in cluster-info.
            verify_signature(&client, &token, API_TIMEOUT).await?;
        }
        Ok::<_, anyhow::Error>(key)
    })?;
    let key = key.map(|k| k.to_string());
    let lines =
        join.map(|(endpoint, hash)| join_commands(&endpoint, &token, &hash, key.as_deref()));
    print_created(&out, &token, key.as_deref(), lines, req.print_join_command);
    Ok(())
}

async fn create_secret(
    client: &kube::Client,
    secret: objects::Object,
    token: &Token,
) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    let objects::Object::Secret(secret) = secret else {
        bail!(
            "templates/cluster/token-secret renders a {}",
            secret.describe()
        );
    };
    let name = secret.metadata.name.clone().unwrap_or_default();
    let exists = || {
        BadInput(format!(
            "a bootstrap token with ID {:?} already exists",
            token.id()
        ))
    };
    let there = secrets
        .get_opt(&name)
        .await
        .map_err(|e| anyhow!("reading kube-system/{name}: {e}"))?;
    if there.is_some() {
        bail!(exists());
    }
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(()),
        // Not there a moment ago: the create was sent again after its answer was lost.
        Err(kube::Error::Api(s)) if s.code == 409 && same_token(&secrets, &name, &secret).await => {
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => bail!(exists()),
        Err(e) => bail!("creating the bootstrap token {:?}: {e}", token.id()),
    }
}

/// Whether the Secret `name` holds the same token (its secret half) as `ours`.
async fn same_token(secrets: &Api<Secret>, name: &str, ours: &Secret) -> bool {
    let Ok(theirs) = secrets.get(name).await else {
        return false;
    };
    let field = |s: &Secret, key: &str| s.data.as_ref().and_then(|d| d.get(key)).cloned();
    field(&theirs, "token-secret") == field(ours, "token-secret")
}

fn print_created(
    out: &Output,
    token: &Token,
    key: Option<&str>,
    lines: Option<(String, Option<String>)>,
    print_join_command: bool,
) {
    let one_line = |s: &str| s.replace(" \\\n\t", " ");
    if out.json() {
        out.print_json(&json!({
            "token": token.to_string(),
            "certificateKey": key,
            "joinCommand": lines.as_ref().map(|(worker, _)| one_line(worker)),
            "controlPlaneJoinCommand": lines.as_ref().and_then(|(_, cp)| cp.as_deref().map(one_line)),
        }));
        return;
    }
    match lines {
        Some((_, Some(control_plane))) => println!("{}", one_line(&control_plane)),
        Some((worker, None)) => println!("{}", one_line(&worker)),
        None => println!("{token}"),
    }
    if let (Some(key), false) = (key, print_join_command) {
        println!("[upload-certs] Using certificate key:\n{key}");
    }
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

/// Reads kube-public/cluster-info, waiting while it is not there yet.
async fn cluster_info(client: &kube::Client, limit: Duration) -> Result<ConfigMap> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-public");
    let start = Instant::now();
    loop {
        match maps.get("cluster-info").await {
            Ok(cm) => return Ok(cm),
            Err(kube::Error::Api(s)) if s.code == 404 && start.elapsed() < limit => {
                tracing::debug!("reading kube-public/cluster-info: {}", s.message);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("reading kube-public/cluster-info: {e}"),
        }
    }
}

/// Checks that cluster-info carries `token`'s signature of its kubeconfig, so that a printed
/// join command is one that discovery accepts.
pub async fn verify_signature(client: &kube::Client, token: &Token, limit: Duration) -> Result<()> {
    let key = format!("jws-kubeconfig-{}", token.id());
    let data = cluster_info(client, limit).await?.data.unwrap_or_default();
    match (data.get(&key), data.get("kubeconfig")) {
        (Some(jws), Some(kubeconfig)) if token::jws_is_valid(jws, kubeconfig, token) => Ok(()),
        (Some(_), _) => bail!("cluster-info carries a {key} signature that the token does not verify"),
        (None, _) => bail!("cluster-info carries no signature for token ID {}: does the token have the signing usage?", token.id()),
    }
}

/// Signs cluster-info for `token` (a merge patch adding its `jws-kubeconfig-<id>`), as the
/// controller-manager's bootstrapsigner would a moment later, with the same bytes.
pub async fn sign_cluster_info(
    client: &kube::Client,
    token: &Token,
    limit: Duration,
) -> Result<()> {
    let cm = cluster_info(client, limit).await?;
    let data = cm.data.unwrap_or_default();
    let kubeconfig = data
        .get("kubeconfig")
        .ok_or_else(|| anyhow!("kube-public/cluster-info has no kubeconfig key"))?;
    let key = format!("jws-kubeconfig-{}", token.id());
    let patch = json!({ "data": { key: token::detached_jws(kubeconfig, token) } });
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-public");
    maps.patch(
        "cluster-info",
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| {
        anyhow!(
            "signing kube-public/cluster-info for token ID {}: {e}",
            token.id()
        )
    })?;
    Ok(())
}

/// Removes a deleted token's signature from cluster-info (the bootstrapsigner would, at its next
/// pass); a cluster without cluster-info is left alone.
async fn unsign_cluster_info(client: &kube::Client, id: &str) -> Result<()> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-public");
    let patch = json!({ "data": { format!("jws-kubeconfig-{id}"): null } });
    match maps
        .patch(
            "cluster-info",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => bail!("removing token ID {id}'s signature from kube-public/cluster-info: {e}"),
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

/// One token as `token list` shows it (kubeadm's columns).
fn row(s: &Secret, now: OffsetDateTime) -> Option<Value> {
    let id = token::secret_field(s, "token-id")?;
    let secret = token::secret_field(s, "token-secret")?;
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
    Some(json!({
        "token": format!("{id}.{secret}"),
        "ttl": expiration.as_deref().map_or("<forever>".into(), |e| time_left(e, now)),
        "expires": expiration.clone().unwrap_or_else(|| "<never>".into()),
        "usages": usages,
        "description": token::secret_field(s, "description").unwrap_or_else(|| "<none>".into()),
        "groups": token::secret_field(s, "auth-extra-groups").unwrap_or_else(|| "<none>".into()),
    }))
}

/// kubeadm's table: the widest cell of each column plus three spaces.
fn print_table(rows: &[Value]) {
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
    for r in rows {
        line(columns.iter().map(|c| text(&r[c])).collect());
    }
}

pub fn list(kubeconfig: &Path, out: Output) -> Result<()> {
    let items = crate::block_on(async {
        let client = crate::kube::client(kubeconfig, None).await?;
        let secrets: Api<Secret> = Api::namespaced(client, "kube-system");
        let list = secrets
            .list(&ListParams::default().fields("type=bootstrap.kubernetes.io/token"))
            .await
            .context("listing bootstrap tokens")?;
        Ok::<_, anyhow::Error>(list.items)
    })?;
    let now = OffsetDateTime::now_utc();
    let rows: Vec<Value> = items.iter().filter_map(|s| row(s, now)).collect();
    if out.json() {
        out.print_json(&json!({ "tokens": rows }));
    } else {
        print_table(&rows);
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
            None if config::is_token_id(given) => given.clone(),
            None => bail!(BadInput(format!(
                "{given:?} is neither a token ID ([a-z0-9]{{6}}) nor a token"
            ))),
        };
        checked.push(id);
    }
    crate::block_on(async {
        let client = crate::kube::client(kubeconfig, None).await?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
        for id in &checked {
            match secrets
                .delete(&format!("bootstrap-token-{id}"), &DeleteParams::default())
                .await
            {
                Ok(_) => {
                    unsign_cluster_info(&client, id).await?;
                    out.step(
                        "token",
                        &format!("bootstrap token {id:?} deleted"),
                        json!({ "deleted": id }),
                    )
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    bail!("bootstrap token {id:?} not found")
                }
                Err(e) => bail!("deleting bootstrap token {id:?}: {e}"),
            }
        }
        Ok(())
    })
}

/// An unexpired token Secret with the same usages, groups and description as `spec`, for a
/// re-run of `init` to use instead of minting another token: the cluster keeps one token per
/// init, not one per run. With its expiration.
pub async fn reusable(
    client: &kube::Client,
    spec: &BootstrapToken,
    now: OffsetDateTime,
) -> Result<Option<(Token, Option<String>)>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    let list = secrets
        .list(&ListParams::default().fields("type=bootstrap.kubernetes.io/token"))
        .await
        .context("listing bootstrap tokens")?;
    for s in list.items {
        let expiration = token::secret_field(&s, "expiration");
        let fresh = match &expiration {
            Some(e) => {
                OffsetDateTime::parse(e, &Rfc3339).is_ok_and(|t| t - now > time::Duration::hours(1))
            }
            None => spec.ttl.as_ref().is_some_and(|t| t.0.is_zero()),
        };
        let usages_match = spec.usages.iter().all(|u| {
            token::secret_field(&s, &format!("usage-bootstrap-{u}")).as_deref() == Some("true")
        });
        let same = fresh
            && usages_match
            && token::secret_field(&s, "auth-extra-groups").unwrap_or_default()
                == spec.groups.join(",")
            && token::secret_field(&s, "description").unwrap_or_default() == spec.description;
        if let (true, Some(id), Some(secret)) = (
            same,
            token::secret_field(&s, "token-id"),
            token::secret_field(&s, "token-secret"),
        ) {
            if let Ok(t) = Token::parse(&format!("{id}.{secret}")) {
                return Ok(Some((t, expiration)));
            }
        }
    }
    Ok(None)
}

/// The Secret of `token` for `spec`: its expiration kept when it is reused, else the spec's
/// `expires`, else now + its TTL (24 h by default; 0 = never).
pub fn secret_for(
    spec: &BootstrapToken,
    token: &Token,
    reused_expiration: Option<String>,
    now: OffsetDateTime,
) -> TokenSecret {
    let expiration = reused_expiration.or_else(|| {
        if let Some(e) = &spec.expires {
            return Some(e.clone());
        }
        let ttl = spec
            .ttl
            .as_ref()
            .map_or(Duration::from_secs(86400), |t| t.0);
        (!ttl.is_zero()).then(|| (now + ttl).format(&Rfc3339).expect("RFC 3339"))
    });
    TokenSecret {
        id: token.id().into(),
        secret: token.secret().into(),
        description: spec.description.clone(),
        expiration,
        usages: spec.usages.clone(),
        groups: spec.groups.clone(),
    }
}
