//! `kubeforge init`: kubeadm's phases, in kubeadm's order and names (contract 6) — the node's
//! files, then the wait, then what kubeadm creates in the cluster, then the join command.

use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::json;

use super::{Data, Env, Phase, Selection, Step};
use crate::cluster::{certs_secret, control_plane, objects, token, tokens};
use crate::config::{CertificateKey, Token};
use crate::kubeconfig::{self, Kubeconfig};
use crate::manifests::{hardened, Component, MANIFEST_MODE};
use crate::node::{File, Outcome};
use crate::output::Output;
use crate::pki;

/// What init's phases work with and hand on.
pub struct InitData {
    pub env: Env,
    /// The certificates the `certs` phase planned for its children.
    certificates: Option<pki::plan::Plan>,
    /// The kubeconfigs the `kubeconfig` phase planned for its children.
    kubeconfigs: Option<kubeconfig::plan::Plan>,
    /// The bootstrap tokens of this run (bootstrap-token), for the join command.
    tokens: Vec<Token>,
    /// The key of the uploaded certificates (upload-certs), for the control-plane join command.
    certificate_key: Option<CertificateKey>,
}

impl Data for InitData {
    fn out(&self) -> &Output {
        &self.env.out
    }
}

impl InitData {
    pub fn new(env: Env) -> InitData {
        InitData {
            env,
            certificates: None,
            kubeconfigs: None,
            tokens: Vec::new(),
            certificate_key: None,
        }
    }
}

/// init's phases.
pub fn phases() -> Vec<Phase<InitData>> {
    vec![
        Phase::new("preflight", "Run pre-flight checks").run(preflight),
        Phase::new("certs", "Certificate generation")
            .run(plan_certificates)
            .children(certificate_phases()),
        Phase::new(
            "encryption",
            "Generate the EncryptionConfiguration that encrypts Secrets at rest (Security encryptionAtRest)",
        )
        .run_if(|d: &InitData| d.env.cfg.security.encryption_at_rest)
        .run(|d: &mut InitData, _: &Step| write_encryption_config(&mut d.env)),
        Phase::new(
            "kubeconfig",
            "Generate all kubeconfig files necessary to establish the control plane and the admin kubeconfig file",
        )
        .run(plan_kubeconfigs)
        .children(kubeconfig_phases()),
        Phase::new("etcd", "Generate static Pod manifest file for local etcd")
            .run_if_noted(
                |d: &InitData| !d.env.cfg.cluster.is_external_etcd(),
                "External etcd mode: skipping the local etcd manifest",
            )
            .run(prepare_etcd)
            .children(vec![Phase::new(
                "local",
                "Generate the static Pod manifest file for a local, single-node local etcd instance",
            )
            .run(write_manifest)]),
        Phase::new(
            "control-plane",
            "Generate all static Pod manifest files necessary to establish the control plane",
        )
        .run(prepare_control_plane)
        .children(control_plane_phases()),
        Phase::new(
            "control-plane-endpoint",
            "Generate the static Pod manifests of the highly available endpoint (haproxy, keepalived)",
        )
        .run_if_noted(
            |d: &InitData| d.env.cfg.endpoint.is_some(),
            "No ControlPlaneEndpoint document: skipping the balancers",
        )
        .run(write_endpoint),
        Phase::new("kubelet-start", "Write kubelet settings and (re)start the kubelet").run(kubelet_start),
        Phase::new("wait-control-plane", "Wait for the control plane to start").run(wait_control_plane),
        Phase::new("upload-config", "Upload the kubeadm and kubelet configuration to a ConfigMap")
            .run(upload_config)
            .children(vec![
                Phase::new("kubeadm", "Upload the kubeadm ClusterConfiguration to a ConfigMap"),
                Phase::new("kubelet", "Upload the kubelet component config to a ConfigMap"),
            ]),
        Phase::new("upload-certs", "Upload certificates to kubeadm-certs")
            .run_if_noted(|d: &InitData| d.env.cfg.upload_certs, "Skipping phase. Please see --upload-certs")
            .run(upload_certs),
        Phase::new("mark-control-plane", "Mark a node as a control-plane").run(mark_control_plane),
        Phase::new("bootstrap-token", "Generates bootstrap tokens used to join a node to a cluster")
            .run(bootstrap_token),
        Phase::new("kubelet-finalize", "Updates settings relevant to the kubelet after TLS bootstrap")
            .children(vec![Phase::new(
                "enable-client-cert-rotation",
                "Enable kubelet client certificate rotation",
            )
            .run(enable_client_cert_rotation)]),
        Phase::new("addon", "Install required addons for passing conformance tests")
            .run(addons)
            .children(vec![
                Phase::new("coredns", "Install the CoreDNS addon to a Kubernetes cluster"),
                Phase::new("kube-proxy", "Install the kube-proxy addon to a Kubernetes cluster"),
            ]),
        Phase::new("kubelet-serving", KUBELET_SERVING)
            .run_if_noted(|d: &InitData| d.env.cfg.security.hardened(), KUBELET_SERVING_SKIPPED)
            .run(|d, step| write_approver_and_approve(&mut d.env, step.name)),
        Phase::new("show-join-command", "Show the join command for control-plane and worker node")
            .run(show_join_command),
    ]
}

fn certificate_phases() -> Vec<Phase<InitData>> {
    let mut children: Vec<Phase<InitData>> = pki::certificate_profiles()
        .into_iter()
        .map(|p| Phase::new(p.name, format!("Generate {}", p.description)).run(write_certificate))
        .collect();
    children.push(
        Phase::new(
            pki::plan::SA,
            "Generate a private key for signing service account tokens along with its public key",
        )
        .run(write_certificate),
    );
    children
}

fn kubeconfig_phases() -> Vec<Phase<InitData>> {
    pki::kubeconfig_profiles()
        .into_iter()
        .map(|p| Phase::new(p.name, format!("Generate {}", p.description)).run(write_kubeconfig))
        .collect()
}

fn control_plane_phases() -> Vec<Phase<InitData>> {
    Component::CONTROL_PLANE
        .into_iter()
        .map(|c| {
            Phase::new(
                c.sub_phase(),
                format!("Generates the {} static Pod manifest", c.name()),
            )
            .run(write_manifest)
        })
        .collect()
}

fn write_certificate(d: &mut InitData, step: &Step) -> Result<()> {
    let plan = d
        .certificates
        .as_mut()
        .expect("the certs phase plans first");
    let env = &mut d.env;
    let files = plan.files(&env.cfg, &env.layout, &env.out, step.name)?;
    env.write_all("certs", &files)?;
    Ok(())
}

/// `<pki>/encryption-config.yaml` with a new key, or the one on disk kept as it is: a new key
/// would leave every Secret already encrypted unreadable.
pub(super) fn write_encryption_config(env: &mut Env) -> Result<()> {
    use crate::encryption::{self, EncryptionConfiguration, Key};
    let path = encryption::path(&env.layout.pki_dir);
    if let Some(text) = env.writer.read(&path)? {
        let source = path.display().to_string();
        EncryptionConfiguration::parse(&String::from_utf8_lossy(&text), &source)
            .context("refusing to replace it: the Secrets encrypted with its keys would become unreadable; move it away only if the cluster has none")?;
        env.out.step(
            "encryption",
            &format!("Using the existing EncryptionConfiguration {source:?}"),
            json!({ "path": path, "generated": false }),
        );
        return Ok(());
    }
    env.writer.ensure_dir(&env.layout.pki_dir.clone(), 0o755)?;
    let config = EncryptionConfiguration::new(Key::generate(env.now));
    env.write(
        "encryption",
        &File::new(path.clone(), config.to_yaml(), encryption::MODE),
    )?;
    // The API server reads this file: when it runs as a non-root user, its read access (ACL) is
    // granted here, as for its other files under the PKI directory.
    env.out.step(
        "encryption",
        &format!(
            "Generated a key and the EncryptionConfiguration {:?}",
            path.display().to_string()
        ),
        json!({ "path": path, "generated": true }),
    );
    Ok(())
}

fn preflight(d: &mut InitData, _: &Step) -> Result<()> {
    let env = &d.env;
    let enforce = env.effects().enforce_preflight();
    crate::preflight::run(&env.cfg, &env.layout, &env.out, true, enforce)?;
    pull_images(env)
}

/// kubeadm's second preflight step on a control-plane node: the images it runs, pulled before
/// anything is written (kubeadm's `ImagePull` check).
pub(super) fn pull_images(env: &Env) -> Result<()> {
    let images = crate::images::for_node(&env.cfg);
    let findings = env.effects().pull_images(env, "preflight", &images);
    let ignore = &env.cfg.init.node_registration.ignore_preflight_errors;
    let enforce = env.effects().enforce_preflight();
    crate::preflight::report(&env.out, "preflight", findings, ignore, enforce)
}

/// The PKI directory, and every certificate the `certs` children will write checked first.
pub(super) fn certificate_plan(env: &mut Env, names: &[String]) -> Result<pki::plan::Plan> {
    let pki_dir = env.layout.pki_dir.clone();
    env.out.step(
        "certs",
        &format!(
            "Using certificateDir folder {:?}",
            pki_dir.display().to_string()
        ),
        json!({ "certificatesDir": pki_dir }),
    );
    let plan = pki::plan::Plan::new(&env.cfg, &env.layout, &env.writer, &env.out, names, env.now)?;
    env.writer.ensure_dir(&pki_dir, 0o755)?;
    Ok(plan)
}

fn plan_certificates(d: &mut InitData, step: &Step) -> Result<()> {
    d.certificates = Some(certificate_plan(&mut d.env, &step.children)?);
    Ok(())
}

/// The kubeconfig folder, and every kubeconfig the children will write checked first.
pub(super) fn kubeconfig_plan(env: &mut Env, names: &[String]) -> Result<kubeconfig::plan::Plan> {
    let dir = env.layout.kubernetes_dir.clone();
    env.out.step(
        "kubeconfig",
        &format!("Using kubeconfig folder {:?}", dir.display().to_string()),
        json!({ "kubeconfigDir": dir }),
    );
    let ca = pki::plan::load_cluster_ca(&env.writer, &env.layout)?;
    kubeconfig::plan::Plan::new(
        &env.cfg,
        &env.layout,
        &env.writer,
        &env.out,
        ca,
        names,
        env.now,
    )
}

fn plan_kubeconfigs(d: &mut InitData, step: &Step) -> Result<()> {
    d.kubeconfigs = Some(kubeconfig_plan(&mut d.env, &step.children)?);
    Ok(())
}

fn write_kubeconfig(d: &mut InitData, step: &Step) -> Result<()> {
    let plan = d
        .kubeconfigs
        .as_mut()
        .expect("the kubeconfig phase plans first");
    let env = &mut d.env;
    let files = plan.files(&env.cfg, &env.layout, &env.out, step.name)?;
    env.write_all("kubeconfig", &files)?;
    Ok(())
}

fn prepare_etcd(d: &mut InitData, _: &Step) -> Result<()> {
    prepare_etcd_dirs(&mut d.env)
}

/// etcd's data directory and the manifest directory.
pub(super) fn prepare_etcd_dirs(env: &mut Env) -> Result<()> {
    let data_dir = env.layout.etcd_data_dir.clone();
    env.writer.ensure_dir(&data_dir, 0o700)?;
    env.writer.apply_grants()?;
    env.writer
        .ensure_dir(&env.layout.manifests_dir.clone(), 0o700)?;
    env.out.step(
        "etcd",
        &format!(
            "Creating static Pod manifest for local etcd in {:?}",
            env.layout.manifests_dir.display().to_string()
        ),
        json!({ "dataDir": data_dir }),
    );
    Ok(())
}

fn prepare_control_plane(d: &mut InitData, _: &Step) -> Result<()> {
    prepare_control_plane_dir(&mut d.env)
}

pub(super) fn prepare_control_plane_dir(env: &mut Env) -> Result<()> {
    let dir = env.layout.manifests_dir.clone();
    env.writer.ensure_dir(&dir, 0o700)?;
    env.writer.apply_grants()?;
    env.out.step(
        "control-plane",
        &format!("Using manifest folder {:?}", dir.display().to_string()),
        json!({ "manifestDir": dir }),
    );
    Ok(())
}

/// The component of a manifest phase: `etcd/local`, `control-plane/apiserver`, ….
fn component_of(step: &Step) -> Component {
    Component::ALL
        .into_iter()
        .find(|c| c.sub_phase() == step.name)
        .expect("a manifest phase is named after its component")
}

/// One component's manifest, rendered and written (the API server's after the files it names).
pub(super) fn write_component(env: &mut Env, phase: &str, component: Component) -> Result<()> {
    env.component_account(component)?;
    let yaml = env.renderer().render(component)?;
    if component == Component::KubeApiserver {
        write_audit_files(env, phase)?;
    }
    write_manifest_file(env, phase, component, yaml)
}

/// Profile hardened: the API server's audit policy and the directory of its audit log.
pub(super) fn write_audit_files(env: &mut Env, phase: &str) -> Result<()> {
    if !env.cfg.security.hardened() {
        return Ok(());
    }
    ensure_audit_log_dir(env)?;
    let path = hardened::audit_policy_file(&env.layout);
    let file = File::new(
        path.clone(),
        hardened::AUDIT_POLICY,
        hardened::AUDIT_POLICY_MODE,
    );
    if !matches!(env.write(phase, &file)?, Outcome::Unchanged) {
        env.out.step(
            phase,
            &format!(
                "Writing the audit policy to {:?}",
                path.display().to_string()
            ),
            json!({ "path": path, "auditLogDir": env.layout.audit_log_dir }),
        );
    }
    Ok(())
}

/// The one place the audit log's directory is made (its owner and mode are set here).
fn ensure_audit_log_dir(env: &mut Env) -> Result<()> {
    let dir = env.layout.audit_log_dir.clone();
    env.writer.ensure_dir(&dir, hardened::AUDIT_LOG_DIR_MODE)?;
    if env.writer.has_owner_granted(&dir) {
        // Logs an earlier cluster left (reset keeps them) may belong to an account since
        // removed and made again with another ID: the API server could not open them.
        env.writer.own_tree(&dir, hardened::AUDIT_LOG_DIR_MODE)?;
    }
    Ok(())
}

pub(super) fn write_manifest_file(
    env: &mut Env,
    phase: &str,
    component: Component,
    yaml: String,
) -> Result<()> {
    let path = component.manifest(&env.layout);
    let outcome = env.write(phase, &File::new(path.clone(), yaml, MANIFEST_MODE))?;
    env.out.step(
        phase,
        &format!("Creating static Pod manifest for {:?}", component.name()),
        json!({ "component": component.name(), "path": path, "outcome": format!("{outcome:?}") }),
    );
    Ok(())
}

fn write_manifest(d: &mut InitData, step: &Step) -> Result<()> {
    let phase = step.path.split('/').next().unwrap_or(step.path);
    write_component(&mut d.env, phase, component_of(step))
}

fn write_endpoint(d: &mut InitData, step: &Step) -> Result<()> {
    let mut members = vec![crate::endpoint::Member::local(&d.env.cfg)];
    members.extend(running_members(&d.env));
    write_endpoint_files(&mut d.env, step.name, &members)
}

/// The control-plane nodes of a cluster this node already serves (this phase re-run to take in
/// nodes that joined since), from the mirror pods its own API server lists; none at a first
/// init, when nothing answers yet.
fn running_members(env: &Env) -> Vec<crate::endpoint::Member> {
    let admin = env.layout.kubeconfig("admin.conf");
    if !admin.exists() {
        return Vec::new();
    }
    let server = env.cfg.local_endpoint_url();
    let listed = crate::block_on(async {
        let client = crate::kube::local_client(&admin, &server).await?;
        crate::endpoint::members_from_pods(&client, std::time::Duration::from_secs(5)).await
    });
    listed.unwrap_or_else(|e| {
        tracing::info!("no running control plane to list the balancer's members from: {e:#}");
        Vec::new()
    })
}

/// The balancers' configuration and static pods for `members` (this node among them).
pub(super) fn write_endpoint_files(
    env: &mut Env,
    phase: &str,
    members: &[crate::endpoint::Member],
) -> Result<()> {
    let interface = crate::endpoint::interface_for(&env.cfg)?;
    let files = crate::endpoint::files(&env.cfg, &env.layout, members, &interface)?;
    let dir = crate::endpoint::config_dir(&env.layout);
    env.writer.ensure_dir(&dir, 0o755)?;
    env.writer
        .ensure_dir(&env.layout.manifests_dir.clone(), 0o700)?;
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    env.out.step(
        phase,
        &format!(
            "Writing the balancers (haproxy, keepalived) for {} control-plane node(s): {}",
            members.len(),
            names.join(", ")
        ),
        json!({ "configDir": dir, "members": names, "interface": interface }),
    );
    env.write_all(phase, &files)?;
    Ok(())
}

/// The kubelet's files, its unit files restricted to root (profile hardened), then the kubelet
/// (re)started.
pub(super) fn write_kubelet_files_and_start(env: &mut Env) -> Result<()> {
    let dir = env.layout.kubelet_dir.clone();
    env.writer.ensure_dir(&dir, 0o700)?;
    let mut changed = false;
    for (name, content, what) in crate::kubelet::files(&env.cfg, &env.layout)? {
        let path = dir.join(name);
        env.out.step(
            "kubelet-start",
            &format!(
                "Writing kubelet {what} to file {:?}",
                path.display().to_string()
            ),
            json!({ "path": path }),
        );
        let file = File::new(path, content, crate::kubelet::file_mode(&env.cfg));
        changed |= !matches!(env.write("kubelet-start", &file)?, Outcome::Unchanged);
    }
    if env.cfg.security.hardened() {
        let root = env.layout.host_root().to_path_buf();
        crate::kubelet::service::restrict_unit_files(&mut env.writer, &env.out, &root)?;
    }
    env.effects().start_kubelet(env, changed)
}

fn kubelet_start(d: &mut InitData, _: &Step) -> Result<()> {
    write_kubelet_files_and_start(&mut d.env)
}

fn wait_control_plane(d: &mut InitData, _: &Step) -> Result<()> {
    d.env.effects().wait_control_plane(&mut d.env)
}

fn upload_config(d: &mut InitData, step: &Step) -> Result<()> {
    let env = &mut d.env;
    let mut all = Vec::new();
    if step.children.iter().any(|c| c == "kubeadm") {
        env.out.step(
            "upload-config",
            "Storing the configuration used in ConfigMap \"kubeadm-config\" in the \"kube-system\" Namespace",
            json!({ "configMap": "kube-system/kubeadm-config" }),
        );
        all.extend(objects::upload_config_kubeadm(&env.cfg)?);
        all.extend(objects::upload_config_endpoint(&env.cfg)?);
        all.extend(objects::upload_config_security(&env.cfg)?);
    }
    if step.children.iter().any(|c| c == "kubelet") {
        env.out.step(
            "kubelet",
            "Creating a ConfigMap \"kubelet-config\" in namespace kube-system with the configuration for the kubelets in the cluster",
            json!({ "configMap": "kube-system/kubelet-config" }),
        );
        all.extend(objects::upload_config_kubelet(&env.cfg, &env.layout)?);
    }
    env.effects().apply(env, "upload-config", all)
}

fn upload_certs(d: &mut InitData, _: &Step) -> Result<()> {
    let env = &mut d.env;
    let key = match env.cfg.init.certificate_key.as_str() {
        "" => CertificateKey::generate(),
        given => CertificateKey::parse(given).map_err(|e| anyhow!(e))?,
    };
    let mut files = Vec::new();
    for (name, path) in
        certs_secret::files(&env.layout.pki_dir, env.cfg.cluster.etcd.external.as_ref())
    {
        files.push((name, env.writer.read(&path)?.unwrap_or_default()));
    }
    let upload = certs_secret::upload_objects(&files, &key, env.now)?;
    env.out.step(
        "upload-certs",
        "Storing the certificates in Secret \"kubeadm-certs\" in the \"kube-system\" Namespace",
        json!({ "secret": "kube-system/kubeadm-certs" }),
    );
    env.effects().upload_certs(env, &upload)?;
    env.out.step(
        "upload-certs",
        "Using certificate key (it is in the control-plane join command)",
        json!({}),
    );
    d.certificate_key = Some(key);
    Ok(())
}

/// kubeadm's two lines, then the node marked (its labels and taints added where missing).
pub(super) fn mark_control_plane_node(env: &Env) -> Result<()> {
    let node = &env.cfg.init.node_registration.name;
    let taints = control_plane::taints(env.cfg.init.node_registration.taints.as_deref());
    env.out.step(
        "mark-control-plane",
        &format!(
            "Marking the node {node} as control-plane by adding the labels: [{}]",
            control_plane::LABELS.join(" ")
        ),
        json!({ "node": node, "labels": control_plane::LABELS }),
    );
    let shown: Vec<String> = taints.iter().map(control_plane::describe_taint).collect();
    env.out.step(
        "mark-control-plane",
        &format!(
            "Marking the node {node} as control-plane by adding the taints [{}]",
            shown.join(" ")
        ),
        json!({ "node": node, "taints": taints }),
    );
    env.effects().mark_control_plane(env, &taints)
}

fn mark_control_plane(d: &mut InitData, _: &Step) -> Result<()> {
    mark_control_plane_node(&d.env)
}

fn bootstrap_token(d: &mut InitData, _: &Step) -> Result<()> {
    let env = &mut d.env;
    let mut secrets = Vec::new();
    let mut tokens = Vec::new();
    for spec in env.cfg.init.bootstrap_tokens.clone() {
        let given = (!spec.token.is_empty())
            .then(|| Token::parse(&spec.token).map_err(|e| anyhow!(e)))
            .transpose()?;
        let (token, reused_expiration) = match given {
            Some(t) => (t, None),
            None => match env.effects().reusable_token(env, &spec)? {
                Some((t, expiration)) => (t, expiration),
                None => (Token::generate(), None),
            },
        };
        secrets.push(tokens::secret_for(
            &spec,
            &token,
            reused_expiration,
            env.now,
        ));
        tokens.push(token);
    }
    let ids: Vec<&str> = tokens.iter().map(Token::id).collect();
    env.out.step(
        "bootstrap-token",
        &format!(
            "Using token ID {} (the whole token is in the join command)",
            ids.join(", ")
        ),
        json!({ "tokenIDs": ids }),
    );
    env.out.step(
        "bootstrap-token",
        "Configuring bootstrap tokens, cluster-info ConfigMap, RBAC Roles",
        json!({}),
    );
    let ca_path = env.layout.pki_dir.join("ca.crt");
    let ca_pem = env.writer.read(&ca_path)?.ok_or_else(|| {
        anyhow!(
            "{} is missing: run the certs phase first",
            ca_path.display()
        )
    })?;
    let all = objects::bootstrap_token(&env.cfg, &secrets, &ca_pem)?;
    d.tokens = tokens;
    env.effects().apply(env, "bootstrap-token", all)
}

/// kubelet.conf pointed at the rotated client certificate the kubelet keeps in its pki dir.
fn enable_client_cert_rotation(d: &mut InitData, _: &Step) -> Result<()> {
    let env = &mut d.env;
    let current = env
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
    let path = env.layout.kubeconfig("kubelet.conf");
    let Some(bytes) = env.writer.read(&path)? else {
        return Ok(());
    };
    let mut conf = Kubeconfig::parse(&bytes).with_context(|| path.display().to_string())?;
    conf.use_client_certificate_file(&current.display().to_string());
    let content = conf.to_yaml();
    if bytes == content.as_bytes() {
        env.out.step(
            "kubelet-finalize",
            &format!(
                "{:?} points to the rotatable kubelet client certificate already",
                path.display().to_string()
            ),
            json!({ "path": path, "unchanged": true }),
        );
        return Ok(());
    }
    env.out.step(
        "kubelet-finalize",
        &format!(
            "Updating {:?} to point to a rotatable kubelet client certificate and key",
            path.display().to_string()
        ),
        json!({ "path": path, "clientCertificate": current }),
    );
    let outcome = env.write("kubelet-finalize", &File::new(path, content, 0o600))?;
    if matches!(outcome, Outcome::Replaced { .. } | Outcome::Created) {
        env.effects().restart_kubelet(env, "kubelet-finalize");
    }
    Ok(())
}

fn addons(d: &mut InitData, step: &Step) -> Result<()> {
    let env = &mut d.env;
    let wants = |c: &str| step.children.iter().any(|s| s == c);
    let dns = wants("coredns") && !env.cfg.cluster.dns.disabled;
    let proxy = wants("kube-proxy") && !env.cfg.cluster.proxy.disabled;
    let mut all = Vec::new();
    if dns {
        all.extend(objects::coredns(&env.cfg)?);
    }
    if proxy {
        all.extend(objects::kube_proxy(&env.cfg)?);
    }
    env.effects().apply(env, "addon", all)?;
    for (applied, addon) in [(dns, "CoreDNS"), (proxy, "kube-proxy")] {
        if applied {
            env.out.step(
                "addons",
                &format!("Applied essential addon: {addon}"),
                json!({ "addon": addon }),
            );
        }
    }
    Ok(())
}

/// kubeforge's `kubelet-serving` phase (profile hardened), in init's and a control-plane join's
/// tables.
pub(super) const KUBELET_SERVING: &str =
    "Run kubeforge's kubelet serving CSR approver and approve this node's serving certificate";
const KUBELET_SERVING_SKIPPED: &str =
    "Profile kubeadm: the kubelet serves a self-signed certificate";

/// The approver's RBAC, kubeconfig and static pod, then this node's serving CSR approved.
pub(super) fn write_approver_and_approve(env: &mut Env, phase: &str) -> Result<()> {
    use crate::kubelet::approver;
    env.effects()
        .apply(env, phase, objects::csr_approver_rbac()?)?;
    let name = approver::KUBECONFIG_PROFILE.to_string();
    let mut plan = kubeconfig_plan(env, std::slice::from_ref(&name))?;
    let files = plan.files(&env.cfg, &env.layout, &env.out, &name)?;
    env.write_all(phase, &files)?;
    let binary = std::env::current_exe().context("locating the kubeforge binary")?;
    let manifest = approver::manifest(&env.cfg, &env.layout, &binary)?;
    env.writer
        .ensure_dir(&env.layout.manifests_dir.clone(), 0o700)?;
    let path = manifest.path.clone();
    let outcome = env.write(phase, &manifest)?;
    env.out.step(
        phase,
        &format!(
            "Creating static Pod manifest for \"{}\" running {}",
            approver::POD,
            binary.display()
        ),
        json!({ "path": path, "binary": binary, "outcome": format!("{outcome:?}") }),
    );
    env.effects().approve_serving(env, phase)
}

/// Live: this node's serving CSR approved, its certificate waited for (a warning on timeout:
/// the approver pod keeps approving).
pub(super) fn approve_serving_live(env: &Env, client: &kube::Client, phase: &str) -> Result<()> {
    let node = env.cfg.init.node_registration.name.clone();
    let limit = std::time::Duration::from_secs(120);
    let start = std::time::Instant::now();
    let issued = crate::block_on(crate::kubelet::serving::approve_own(client, &node, limit))?;
    let seconds = start.elapsed().as_secs_f64();
    let message = if issued {
        format!("The kubelet of {node} has a serving certificate from the cluster CA after {seconds:.1}s")
    } else {
        format!(
            "WARNING: no serving certificate issued for the kubelet of {node} after {seconds:.0}s: \
             kubectl logs/exec on it fail until one is (kubectl get csr; the kubeforge-approver pod keeps approving)"
        )
    };
    env.out.step(
        phase,
        &message,
        json!({ "node": node, "issued": issued, "seconds": seconds }),
    );
    Ok(())
}

fn show_join_command(d: &mut InitData, _: &Step) -> Result<()> {
    let env = &d.env;
    let Some(token) = d.tokens.first().cloned() else {
        bail!("no bootstrap token: run the bootstrap-token phase first");
    };
    let ca_path = env.layout.pki_dir.join("ca.crt");
    let ca_pem = env
        .writer
        .read(&ca_path)?
        .ok_or_else(|| anyhow!("{} is missing", ca_path.display()))?;
    let ca_der = pem::parse(&ca_pem)
        .context("the cluster CA")?
        .into_contents();
    let hash = token::ca_pin(&ca_der)?;
    env.effects().verify_signed(env, &token)?;
    let endpoint = env
        .cfg
        .control_plane_endpoint_url()
        .trim_start_matches("https://")
        .to_string();
    let key = d.certificate_key.as_ref().map(|k| k.to_string());
    if env.out.json() {
        env.out.print_json(&json!({
            "phase": "show-join-command",
            "endpoint": endpoint,
            "token": token.to_string(),
            "caCertHash": hash,
            "certificateKey": key,
        }));
        return Ok(());
    }
    let (worker, control_plane) = tokens::join_commands(&endpoint, &token, &hash, key.as_deref());
    print_join_commands(
        &env.layout.kubeconfig("admin.conf"),
        &worker,
        control_plane.as_deref(),
    );
    Ok(())
}

fn print_join_commands(admin: &Path, worker: &str, control_plane: Option<&str>) {
    println!("\nYour Kubernetes control-plane has initialized successfully!\n");
    println!(
        "To start using your cluster, as root:\n\n  export KUBECONFIG={}\n",
        admin.display()
    );
    println!("You should now deploy a pod network to the cluster.\n");
    if let Some(control_plane) = control_plane {
        println!("You can now join any number of control-plane nodes by running the following command on each as root:\n");
        println!("{control_plane}\n");
        println!("The certificate key decrypts the uploaded certificates for two hours; `kubeforge init phase upload-certs --upload-certs` makes a new one.\n");
    }
    println!(
        "Then you can join any number of worker nodes by running the following on each as root:\n"
    );
    println!("{worker}");
}

/// Runs init as `selection` says: every phase, or one (`init phase <name> [child]`).
pub fn run(env: Env, selection: &Selection) -> Result<()> {
    let phases = phases();
    if selection.phase.is_none() {
        pki::prefetch_keys(&env.cfg, &env.layout, &selection.skip);
    }
    let mut data = InitData::new(env);
    super::run(&phases, &mut data, selection)?;
    // Run alone, upload-certs is how an operator gets a fresh key: show it.
    if let (Some("upload-certs"), Some(key)) = (selection.phase.as_deref(), &data.certificate_key) {
        if data.env.out.json() {
            data.env
                .out
                .print_json(&json!({ "certificateKey": key.to_string() }));
        } else {
            println!("[upload-certs] Using certificate key:\n{key}");
        }
    }
    data.env.finish(None);
    Ok(())
}
