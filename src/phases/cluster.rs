//! The phases after `wait-control-plane` (contract 6): what kubeadm creates in the cluster, in
//! kubeadm's order and names. Each applies its objects server-side, all at once, so a re-run
//! changes nothing; `--dry-run` writes them under `<dry-run dir>/objects/<phase>/` instead.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;

use super::{Context, Phase, Selection};
use crate::cluster::apply::{self, Applied};
use crate::cluster::certs_secret;
use crate::cluster::objects::{self, describe, TokenSecret};
use crate::cluster::token::{self, Token};
use crate::cluster::tokens;
use crate::kubeconfig::Kubeconfig;

pub const UPLOAD_CONFIG: Phase = Phase {
    name: "upload-config",
    description: "Upload the kubeadm and kubelet configuration to a ConfigMap",
    subphases: || {
        vec![
            (
                "kubeadm".into(),
                "Upload the kubeadm ClusterConfiguration to a ConfigMap".into(),
            ),
            (
                "kubelet".into(),
                "Upload the kubelet component config to a ConfigMap".into(),
            ),
        ]
    },
    run: run_upload_config,
};

pub const MARK_CONTROL_PLANE: Phase = Phase {
    name: "mark-control-plane",
    description: "Mark a node as a control-plane",
    subphases: Vec::new,
    run: run_mark_control_plane,
};

pub const BOOTSTRAP_TOKEN: Phase = Phase {
    name: "bootstrap-token",
    description: "Generates bootstrap tokens used to join a node to a cluster",
    subphases: Vec::new,
    run: run_bootstrap_token,
};

pub const KUBELET_FINALIZE: Phase = Phase {
    name: "kubelet-finalize",
    description: "Updates settings relevant to the kubelet after TLS bootstrap",
    subphases: || {
        vec![(
            "enable-client-cert-rotation".into(),
            "Enable kubelet client certificate rotation".into(),
        )]
    },
    run: run_kubelet_finalize,
};

pub const ADDON: Phase = Phase {
    name: "addon",
    description: "Install required addons for passing conformance tests",
    subphases: || {
        vec![
            (
                "coredns".into(),
                "Install the CoreDNS addon to a Kubernetes cluster".into(),
            ),
            (
                "kube-proxy".into(),
                "Install the kube-proxy addon to a Kubernetes cluster".into(),
            ),
        ]
    },
    run: run_addon,
};

pub const SHOW_JOIN_COMMAND: Phase = Phase {
    name: "show-join-command",
    description: "Show the join command for control-plane and worker node",
    subphases: Vec::new,
    run: run_show_join_command,
};

/// Runs `f` with an admin client on this node's API endpoint; the runtime and the client (one
/// TLS connection) are made once per run and shared by every phase.
fn with_client<T>(ctx: &mut Context, f: impl AsyncFnOnce(kube::Client) -> Result<T>) -> Result<T> {
    if ctx.api.is_none() {
        let runtime = crate::runtime()?;
        let admin = ctx.layout.kubeconfig("admin.conf");
        let server = ctx.cfg.local_endpoint_url();
        let client = runtime.block_on(crate::health::local_client(&admin, &server))?;
        ctx.api = Some((runtime, client));
    }
    let (runtime, client) = ctx.api.as_ref().expect("set above");
    runtime.block_on(f(client.clone()))
}

fn api_timeout(ctx: &Context) -> Duration {
    ctx.cfg.init.timeouts.kubernetes_api_call.0
}

/// A Secret's values as kubeforge writes them to a dry-run file: token secrets and encrypted
/// certificates are not for a temp dir.
fn redacted(object: &Value) -> Value {
    let mut object = object.clone();
    if object["kind"] == "Secret" {
        if let Some(data) = object["data"].as_object_mut() {
            for (key, value) in data.iter_mut() {
                if key == "token-secret" || object_is_certs(key) {
                    *value = json!("REDACTED");
                }
            }
        }
    }
    object
}

fn object_is_certs(key: &str) -> bool {
    key.ends_with(".crt") || key.ends_with(".key") || key.ends_with(".pub")
}

/// Applies `objects` (or, in a dry-run, writes them out) and reports how many changed.
pub(super) fn apply_objects(ctx: &mut Context, phase: &str, objects: Vec<Value>) -> Result<()> {
    if let Some(dir) = ctx.writer.dry_run_dir() {
        let dir = dir.join("objects").join(phase);
        std::fs::create_dir_all(&dir)?;
        for (i, object) in objects.iter().enumerate() {
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or("?")
                .replace(':', "_");
            let kind = object["kind"].as_str().unwrap_or("?").to_lowercase();
            let path = dir.join(format!("{:02}-{kind}-{name}.yaml", i + 1));
            std::fs::write(&path, crate::render::to_yaml(redacted(object)))?;
            ctx.out.step(
                "dryrun",
                &format!("Would apply {} ({})", describe(object), path.display()),
                json!({ "object": describe(object), "path": path, "origin": phase }),
            );
        }
        return Ok(());
    }
    let limit = api_timeout(ctx);
    let start = Instant::now();
    let results = with_client(ctx, async |client| {
        apply::apply_all(&client, &objects, limit).await
    })?;
    report(ctx, phase, &objects, &results, start);
    Ok(())
}

/// `[phase] N objects in X ms: a created, b changed, c unchanged`.
fn report(ctx: &Context, phase: &str, objects: &[Value], results: &[Applied], start: Instant) {
    for (object, applied) in objects.iter().zip(results) {
        tracing::info!("{}: {applied:?}", describe(object));
    }
    let count = |a: Applied| results.iter().filter(|r| **r == a).count();
    ctx.out.step(
        phase,
        &format!(
            "{} object{} in {:.0} ms: {} created, {} changed, {} unchanged",
            objects.len(),
            if objects.len() == 1 { "" } else { "s" },
            start.elapsed().as_secs_f64() * 1000.0,
            count(Applied::Created),
            count(Applied::Configured),
            count(Applied::Unchanged)
        ),
        json!({
            "objects": objects.iter().map(describe).collect::<Vec<_>>(),
            "created": count(Applied::Created),
            "changed": count(Applied::Configured),
            "unchanged": count(Applied::Unchanged),
        }),
    );
}

fn run_upload_config(ctx: &mut Context, sel: &Selection) -> Result<()> {
    let mut all = Vec::new();
    if sel.wants("kubeadm") {
        ctx.out.step(
            "upload-config",
            "Storing the configuration used in ConfigMap \"kubeadm-config\" in the \"kube-system\" Namespace",
            json!({ "configMap": "kube-system/kubeadm-config" }),
        );
        all.extend(objects::upload_config_kubeadm(&ctx.cfg)?);
    }
    if sel.wants("kubelet") {
        ctx.out.step(
            "kubelet",
            "Creating a ConfigMap \"kubelet-config\" in namespace kube-system with the configuration for the kubelets in the cluster",
            json!({ "configMap": "kube-system/kubelet-config" }),
        );
        all.extend(objects::upload_config_kubelet(&ctx.cfg, &ctx.layout)?);
    }
    apply_objects(ctx, "upload-config", all)
}

const CONTROL_PLANE_LABELS: [&str; 2] = [
    "node-role.kubernetes.io/control-plane",
    "node.kubernetes.io/exclude-from-external-load-balancers",
];

fn run_mark_control_plane(ctx: &mut Context, _: &Selection) -> Result<()> {
    let node = ctx.cfg.init.node_registration.name.clone();
    let taints: Vec<Value> = match &ctx.cfg.init.node_registration.taints {
        None => {
            vec![json!({"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"})]
        }
        Some(list) => list
            .iter()
            .map(|t| serde_json::to_value(t).expect("a taint"))
            .collect(),
    };
    ctx.out.step(
        "mark-control-plane",
        &format!(
            "Marking the node {node} as control-plane by adding the labels: [{}]",
            CONTROL_PLANE_LABELS.join(" ")
        ),
        json!({ "node": node, "labels": CONTROL_PLANE_LABELS }),
    );
    let shown: Vec<String> = taints
        .iter()
        .map(|t| {
            let value = t["value"]
                .as_str()
                .map(|v| format!("={v}"))
                .unwrap_or_default();
            format!(
                "{}{value}:{}",
                t["key"].as_str().unwrap_or(""),
                t["effect"].as_str().unwrap_or("")
            )
        })
        .collect();
    ctx.out.step(
        "mark-control-plane",
        &format!(
            "Marking the node {node} as control-plane by adding the taints [{}]",
            shown.join(" ")
        ),
        json!({ "node": node, "taints": taints }),
    );
    if ctx.writer.dry_run_dir().is_some() {
        return Ok(());
    }
    let limit = api_timeout(ctx);
    let changed = with_client(ctx, async |client| {
        let nodes: Api<Node> = Api::all(client);
        let start = Instant::now();
        loop {
            // The kubelet registers the Node; wait for it, then add what is missing. The
            // resourceVersion makes a concurrent change (the kubelet's) a conflict to retry.
            let current = match nodes.get_opt(&node).await {
                Ok(Some(n)) => n,
                Ok(None) | Err(_) if start.elapsed() < limit => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
                Ok(None) => bail!("the node {node} did not register within {limit:?}"),
                Err(e) => bail!("reading the node {node}: {e}"),
            };
            let labels = current.metadata.labels.clone().unwrap_or_default();
            let missing_labels: Vec<&str> = CONTROL_PLANE_LABELS
                .into_iter()
                .filter(|l| labels.get(*l).is_none_or(|v| !v.is_empty()))
                .collect();
            let mut all_taints: Vec<Value> = current
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|t| serde_json::to_value(t).expect("a taint"))
                .collect();
            let before = all_taints.len();
            for t in &taints {
                if !all_taints
                    .iter()
                    .any(|e| e["key"] == t["key"] && e["effect"] == t["effect"])
                {
                    all_taints.push(t.clone());
                }
            }
            if missing_labels.is_empty() && all_taints.len() == before {
                return Ok(false);
            }
            let label_patch: serde_json::Map<String, Value> = missing_labels
                .iter()
                .map(|l| (l.to_string(), json!("")))
                .collect();
            let patch = json!({
                "metadata": { "labels": label_patch, "resourceVersion": current.metadata.resource_version },
                "spec": { "taints": all_taints },
            });
            match nodes
                .patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) if start.elapsed() < limit => {
                    tracing::debug!("marking {node}: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => bail!("marking the node {node}: {e}"),
            }
        }
    })?;
    tracing::info!(
        "node {node}: {}",
        if changed { "marked" } else { "already marked" }
    );
    Ok(())
}

/// An unexpired token Secret with the same usages, groups and description, for a re-run to use
/// instead of minting another token: the cluster keeps one token per init, not one per run.
async fn reusable_token(
    client: &kube::Client,
    spec: &crate::config::BootstrapToken,
    now: time::OffsetDateTime,
) -> Result<Option<(Token, Option<String>)>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    let list = secrets
        .list(&ListParams::default().fields("type=bootstrap.kubernetes.io/token"))
        .await
        .context("listing bootstrap tokens")?;
    for s in list.items {
        let expiration = token::secret_field(&s, "expiration");
        let fresh = match &expiration {
            Some(e) => time::OffsetDateTime::parse(e, &Rfc3339)
                .is_ok_and(|t| t - now > time::Duration::hours(1)),
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

fn run_bootstrap_token(ctx: &mut Context, _: &Selection) -> Result<()> {
    let specs = ctx.cfg.init.bootstrap_tokens.clone();
    let now = ctx.now;
    let dry_run = ctx.writer.dry_run_dir().is_some();
    let mut secrets = Vec::new();
    let mut tokens = Vec::new();
    for spec in &specs {
        let given = (!spec.token.is_empty())
            .then(|| Token::parse(&spec.token))
            .transpose()?;
        let reused = match (&given, dry_run) {
            (None, false) => with_client(ctx, async |c| reusable_token(&c, spec, now).await)?,
            _ => None,
        };
        let (token, expiration) = match (given, reused) {
            (Some(t), _) => (t, None),
            (None, Some((t, e))) => (t, e),
            (None, None) => (Token::generate(), None),
        };
        let expiration = expiration.or_else(|| {
            if let Some(e) = &spec.expires {
                return Some(e.clone());
            }
            let ttl = spec
                .ttl
                .as_ref()
                .map_or(Duration::from_secs(86400), |t| t.0);
            (!ttl.is_zero()).then(|| (now + ttl).format(&Rfc3339).expect("RFC 3339"))
        });
        secrets.push(TokenSecret {
            id: token.id().into(),
            secret: token.secret().into(),
            description: spec.description.clone(),
            expiration,
            usages: spec.usages.clone(),
            groups: spec.groups.clone(),
        });
        tokens.push(token);
    }
    ctx.out.step(
        "bootstrap-token",
        &format!(
            "Using token ID {} (the whole token is in the join command)",
            tokens.iter().map(Token::id).collect::<Vec<_>>().join(", ")
        ),
        json!({ "tokenIDs": tokens.iter().map(Token::id).collect::<Vec<_>>() }),
    );
    ctx.out.step(
        "bootstrap-token",
        "Configuring bootstrap tokens, cluster-info ConfigMap, RBAC Roles",
        json!({}),
    );
    let ca_pem = ctx
        .writer
        .read(&ctx.layout.pki_dir.join("ca.crt"))?
        .ok_or_else(|| {
            anyhow!(
                "{} is missing: run the certs phase first",
                ctx.layout.pki_dir.join("ca.crt").display()
            )
        })?;
    let all = objects::bootstrap_token(&ctx.cfg, &secrets, &ca_pem)?;
    ctx.tokens = tokens;
    apply_objects(ctx, "bootstrap-token", all)
}

fn run_kubelet_finalize(ctx: &mut Context, sel: &Selection) -> Result<()> {
    if !sel.wants("enable-client-cert-rotation") {
        return Ok(());
    }
    let current = ctx
        .layout
        .kubelet_dir
        .join("pki/kubelet-client-current.pem");
    if !current.exists() {
        tracing::info!(
            "{} does not exist yet; kubelet.conf keeps its embedded certificate",
            current.display()
        );
        return Ok(());
    }
    let path = ctx.layout.kubeconfig("kubelet.conf");
    let Some(bytes) = ctx.writer.read(&path)? else {
        return Ok(());
    };
    let mut conf = Kubeconfig::parse(&bytes).with_context(|| path.display().to_string())?;
    let file = current.display().to_string();
    for named in &mut conf.users {
        named.user.client_certificate = Some(file.clone());
        named.user.client_key = Some(file.clone());
        named.user.client_certificate_data = None;
        named.user.client_key_data = None;
    }
    let content = conf.to_yaml();
    if bytes == content.as_bytes() {
        ctx.out.step(
            "kubelet-finalize",
            &format!(
                "{:?} points to the rotatable kubelet client certificate already",
                path.display().to_string()
            ),
            json!({ "path": path, "unchanged": true }),
        );
        return Ok(());
    }
    ctx.out.step(
        "kubelet-finalize",
        &format!(
            "Updating {:?} to point to a rotatable kubelet client certificate and key",
            path.display().to_string()
        ),
        json!({ "path": path, "clientCertificate": file }),
    );
    let outcome = ctx.write("kubelet-finalize", &path, content.as_bytes(), 0o600)?;
    if matches!(
        outcome,
        crate::host::Outcome::Replaced { .. } | crate::host::Outcome::Created
    ) {
        super::kubelet::restart_kubelet(ctx, "kubelet-finalize")?;
    }
    Ok(())
}

fn run_addon(ctx: &mut Context, sel: &Selection) -> Result<()> {
    let dns = sel.wants("coredns") && !ctx.cfg.cluster.dns.disabled;
    let proxy = sel.wants("kube-proxy") && !ctx.cfg.cluster.proxy.disabled;
    let mut all = Vec::new();
    if dns {
        all.extend(objects::coredns(&ctx.cfg)?);
    }
    if proxy {
        all.extend(objects::kube_proxy(&ctx.cfg)?);
    }
    apply_objects(ctx, "addon", all)?;
    if dns {
        ctx.out.step(
            "addons",
            "Applied essential addon: CoreDNS",
            json!({ "addon": "CoreDNS" }),
        );
    }
    if proxy {
        ctx.out.step(
            "addons",
            "Applied essential addon: kube-proxy",
            json!({ "addon": "kube-proxy" }),
        );
    }
    Ok(())
}

fn run_show_join_command(ctx: &mut Context, _: &Selection) -> Result<()> {
    let Some(token) = ctx.tokens.first().cloned() else {
        bail!("no bootstrap token: run the bootstrap-token phase first");
    };
    let ca_path = ctx.layout.pki_dir.join("ca.crt");
    let ca_pem = ctx
        .writer
        .read(&ca_path)?
        .ok_or_else(|| anyhow!("{} is missing", ca_path.display()))?;
    let ca_der = pem::parse(&ca_pem)
        .context("the cluster CA")?
        .into_contents();
    let hash = token::ca_pin(&ca_der)?;
    if ctx.writer.dry_run_dir().is_none() {
        let limit = api_timeout(ctx);
        with_client(ctx, async |client| {
            tokens::wait_for_signature(&client, &token, limit).await
        })?;
    }
    let endpoint = ctx
        .cfg
        .control_plane_endpoint_url()
        .trim_start_matches("https://")
        .to_string();
    let key = ctx.certificate_key.clone();
    let (worker, control_plane) = tokens::join_commands(&endpoint, &token, &hash, key.as_deref());
    if ctx.out.json() {
        ctx.out.print_json(&json!({
            "phase": "show-join-command",
            "endpoint": endpoint,
            "token": token.to_string(),
            "caCertHash": hash,
            "certificateKey": key,
        }));
        return Ok(());
    }
    println!("\nYour Kubernetes control-plane has initialized successfully!\n");
    println!(
        "To start using your cluster, as root:\n\n  export KUBECONFIG={}\n",
        ctx.layout.kubeconfig("admin.conf").display()
    );
    println!("You should now deploy a pod network to the cluster.\n");
    if let Some(control_plane) = &control_plane {
        println!("You can now join any number of control-plane nodes by running the following command on each as root:\n");
        println!("{control_plane}\n");
        println!("The certificate key decrypts the uploaded certificates for two hours; `kubeforge init phase upload-certs --upload-certs` makes a new one.\n");
    }
    println!(
        "Then you can join any number of worker nodes by running the following on each as root:\n"
    );
    println!("{worker}");
    Ok(())
}

pub const UPLOAD_CERTS: Phase = Phase {
    name: "upload-certs",
    description: "Upload certificates to kubeadm-certs",
    subphases: Vec::new,
    run: run_upload_certs,
};

fn run_upload_certs(ctx: &mut Context, _: &Selection) -> Result<()> {
    if !ctx.cfg.upload_certs {
        ctx.out.step(
            "upload-certs",
            "Skipping phase. Please see --upload-certs",
            json!({ "skipped": true }),
        );
        return Ok(());
    }
    let key_hex = match ctx.cfg.init.certificate_key.as_str() {
        "" => token::generate_certificate_key(),
        given => given.to_string(),
    };
    let key = certs_secret::parse_key(&key_hex)?;
    let mut files = Vec::new();
    for (name, path) in
        certs_secret::files(&ctx.layout.pki_dir, ctx.cfg.cluster.etcd.external.as_ref())
    {
        files.push((name, ctx.writer.read(&path)?.unwrap_or_default()));
    }
    let upload = certs_secret::upload_objects(&files, &key, ctx.now)?;
    ctx.out.step(
        "upload-certs",
        "Storing the certificates in Secret \"kubeadm-certs\" in the \"kube-system\" Namespace",
        json!({ "secret": "kube-system/kubeadm-certs" }),
    );
    let mut all = upload.rest.clone();
    all.push(upload.certs.clone());
    if ctx.writer.dry_run_dir().is_some() {
        apply_objects(ctx, "upload-certs", all)?;
    } else {
        let limit = api_timeout(ctx);
        let start = Instant::now();
        let results = with_client(ctx, async |client| {
            certs_secret::upload(&client, &upload, limit).await
        })?;
        report(ctx, "upload-certs", &all, &results, start);
    }
    ctx.out.step(
        "upload-certs",
        "Using certificate key (it is in the control-plane join command)",
        json!({}),
    );
    ctx.certificate_key = Some(key_hex);
    Ok(())
}
