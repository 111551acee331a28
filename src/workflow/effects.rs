//! What init and join do to the cluster and to the node's services, behind one interface with
//! two implementations chosen once per run (`Env::open`): `Live` changes the cluster, `DryRun`
//! writes what it would apply under the dry-run directory and waits for nothing. Files go through
//! the host writer, whose own dry-run redirects them; so no phase asks whether it is a dry-run.

use std::cell::OnceCell;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::core::v1::Taint;
use serde_json::{json, Value};

use super::Env;
use crate::cluster::certs_secret::Upload;
use crate::cluster::{control_plane, objects, tokens};
use crate::config::{BootstrapToken, Token};
use crate::kube::apply::{self, Applied, Object};
use crate::preflight::Finding;

/// The effects of a run on the cluster and on the node's services.
pub trait Effects {
    /// Whether pre-flight errors stop the run (and root is required); a dry-run only warns.
    fn enforce_preflight(&self) -> bool;
    /// Brings `images` onto the node through the CRI, as nodeRegistration's imagePullPolicy and
    /// imagePullSerial say; kubeadm's `ImagePull` findings. A dry-run says what it would pull.
    fn pull_images(&self, env: &Env, phase: &str, images: &[String]) -> Vec<Finding>;
    /// Applies `objects` server-side, all at once, and reports how many changed.
    fn apply(&self, env: &mut Env, phase: &str, objects: Vec<Object>) -> Result<()>;
    /// Uploads the encrypted certificates and the token Secret that owns them.
    fn upload_certs(&self, env: &mut Env, upload: &Upload) -> Result<()>;
    /// An unexpired token an earlier run made for `spec`, with its expiration.
    fn reusable_token(
        &self,
        env: &Env,
        spec: &BootstrapToken,
    ) -> Result<Option<(Token, Option<String>)>>;
    /// Checks that cluster-info carries the token's signature.
    fn verify_signed(&self, env: &Env, token: &Token) -> Result<()>;
    /// Adds the control-plane labels and `taints` to this node.
    fn mark_control_plane(&self, env: &Env, taints: &[Taint]) -> Result<()>;
    /// Waits for the kubelet and the static pods, until their mirror pods are Ready.
    fn wait_control_plane(&self, env: &mut Env) -> Result<()>;
    /// (Re)starts the kubelet when its files `changed` or it is not running.
    fn start_kubelet(&self, env: &mut Env, changed: bool) -> Result<()>;
    /// Restarts the kubelet so it reads a changed kubelet.conf.
    fn restart_kubelet(&self, env: &Env, phase: &str);
    /// A joining kubelet's TLS bootstrap, followed until its Node is registered; then the
    /// bootstrap kubeconfig (it holds the token) is removed.
    fn wait_tls_bootstrap(&self, env: &mut Env, bootstrap_conf: &Path) -> Result<()>;
    /// Adds this node's etcd to the cluster as a learner and promotes it (`rendered`: the
    /// manifest as a first member would get it, for its URLs).
    fn join_etcd(&self, env: &mut Env, rendered: &str) -> Result<()>;
    /// Approves this node's kubelet serving CSR (profile hardened) and waits for its
    /// certificate.
    fn approve_serving(&self, env: &Env, phase: &str) -> Result<()>;
    /// The end of the run: the closing words, or where a dry-run's files are.
    fn finish(&self, env: &Env, closing: Option<&str>);
}

/// Changes the cluster, through one admin client made on first use.
#[derive(Default)]
pub struct Live {
    client: OnceCell<kube::Client>,
}

impl Live {
    fn client(&self, env: &Env) -> Result<kube::Client> {
        if let Some(client) = self.client.get() {
            return Ok(client.clone());
        }
        let admin = env.layout.kubeconfig("admin.conf");
        let server = env.cfg.local_endpoint_url();
        let client = crate::block_on(crate::kube::local_client(&admin, &server))?;
        Ok(self.client.get_or_init(|| client).clone())
    }

    fn limit(env: &Env) -> Duration {
        env.cfg.init.timeouts.kubernetes_api_call.0
    }
}

/// `[phase] N objects in X ms: a created, b changed, c unchanged`.
fn report(env: &Env, phase: &str, objects: &[Object], results: &[Applied], start: Instant) {
    for (object, applied) in objects.iter().zip(results) {
        tracing::info!("{}: {applied:?}", object.describe());
    }
    let count = |a: Applied| results.iter().filter(|r| **r == a).count();
    env.out.step(
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
            "objects": objects.iter().map(Object::describe).collect::<Vec<_>>(),
            "created": count(Applied::Created),
            "changed": count(Applied::Configured),
            "unchanged": count(Applied::Unchanged),
        }),
    );
}

impl Effects for Live {
    fn enforce_preflight(&self) -> bool {
        true
    }

    fn pull_images(&self, env: &Env, phase: &str, images: &[String]) -> Vec<Finding> {
        for line in [
            "Pulling images required for setting up a Kubernetes cluster",
            "This might take a minute or two, depending on the speed of your internet connection",
            "You can also perform this action beforehand using 'kubeforge config images pull'",
        ] {
            env.out.step(phase, line, json!({}));
        }
        let pull = crate::images::Pull::for_node(&env.cfg, &env.out, phase);
        crate::images::findings(pull.run(images))
    }

    fn apply(&self, env: &mut Env, phase: &str, objects: Vec<Object>) -> Result<()> {
        let client = self.client(env)?;
        let start = Instant::now();
        let results = crate::block_on(apply::apply_all(&client, &objects, Self::limit(env)))?;
        report(env, phase, &objects, &results, start);
        Ok(())
    }

    fn upload_certs(&self, env: &mut Env, upload: &Upload) -> Result<()> {
        let client = self.client(env)?;
        let start = Instant::now();
        let results = crate::block_on(crate::cluster::certs_secret::upload(
            &client,
            upload,
            Self::limit(env),
        ))?;
        report(env, "upload-certs", &upload.all(), &results, start);
        Ok(())
    }

    fn reusable_token(
        &self,
        env: &Env,
        spec: &BootstrapToken,
    ) -> Result<Option<(Token, Option<String>)>> {
        let client = self.client(env)?;
        crate::block_on(tokens::reusable(&client, spec, env.now))
    }

    fn verify_signed(&self, env: &Env, token: &Token) -> Result<()> {
        let client = self.client(env)?;
        crate::block_on(tokens::verify_signature(&client, token, Self::limit(env)))
    }

    fn mark_control_plane(&self, env: &Env, taints: &[Taint]) -> Result<()> {
        let client = self.client(env)?;
        let node = &env.cfg.init.node_registration.name;
        let changed =
            crate::block_on(control_plane::mark(&client, node, taints, Self::limit(env)))?;
        tracing::info!(
            "node {node}: {}",
            if changed { "marked" } else { "already marked" }
        );
        Ok(())
    }

    /// The wait, with what it needs created as the API server comes up: the built-in
    /// PriorityClasses at once (so the kubelet's first mirror pods are accepted), and the
    /// `kubeadm:cluster-admins` binding that lets admin.conf watch the mirror pods.
    fn wait_control_plane(&self, env: &mut Env) -> Result<()> {
        let admin = env.layout.kubeconfig("admin.conf");
        let super_admin = env.layout.kubeconfig("super-admin.conf");
        let classes_as = if super_admin.exists() {
            super_admin.clone()
        } else {
            admin
        };
        let server = crate::health::api_server_url(&env.layout)?;
        crate::block_on(async {
            let early = tokio::spawn(control_plane::create_priority_classes_early(
                classes_as,
                server.clone(),
            ));
            let _abort = AbortOnDrop(early);
            crate::health::wait(&env.cfg, &env.layout, env.out, async |admin| {
                control_plane::ensure_cluster_admins(admin, &super_admin, &server).await
            })
            .await
        })
    }

    fn start_kubelet(&self, env: &mut Env, changed: bool) -> Result<()> {
        let mode = crate::kubelet::file_mode(&env.cfg);
        crate::kubelet::service::start(&mut env.writer, &env.out, &env.layout, changed, mode)
    }

    fn restart_kubelet(&self, env: &Env, phase: &str) {
        crate::kubelet::service::restart(&env.out, &env.layout, phase);
    }

    fn wait_tls_bootstrap(&self, env: &mut Env, bootstrap_conf: &Path) -> Result<()> {
        super::join::wait_tls_bootstrap_live(env, bootstrap_conf)
    }

    fn join_etcd(&self, env: &mut Env, rendered: &str) -> Result<()> {
        super::join::join_etcd_live(env, rendered)
    }

    fn approve_serving(&self, env: &Env, phase: &str) -> Result<()> {
        super::init::approve_serving_live(env, &self.client(env)?, phase)
    }

    fn finish(&self, env: &Env, closing: Option<&str>) {
        if let (Some(text), false) = (closing, env.out.json()) {
            println!("{text}");
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Changes nothing: what would be applied is written under the dry-run directory, and nothing is
/// waited for.
pub struct DryRun;

/// A Secret's values as kubeforge writes them to a dry-run file: token secrets and encrypted
/// certificates are not for a temp dir.
fn redacted(object: &Object) -> Value {
    let mut object = object.to_value();
    if object["kind"] == "Secret" {
        if let Some(data) = object["data"].as_object_mut() {
            for (key, value) in data.iter_mut() {
                let certs = key.ends_with(".crt") || key.ends_with(".key") || key.ends_with(".pub");
                if key == "token-secret" || certs {
                    *value = json!("REDACTED");
                }
            }
        }
    }
    object
}

impl Effects for DryRun {
    fn enforce_preflight(&self) -> bool {
        false
    }

    fn pull_images(&self, env: &Env, phase: &str, images: &[String]) -> Vec<Finding> {
        env.out.step(
            phase,
            &format!(
                "Would pull the required images (like 'kubeforge config images pull'): {}",
                images.join(", ")
            ),
            json!({ "dryRun": true, "images": images }),
        );
        Vec::new()
    }

    fn apply(&self, env: &mut Env, phase: &str, objects: Vec<Object>) -> Result<()> {
        for (i, object) in objects.iter().enumerate() {
            let name = object.name().replace(':', "_");
            let kind = object.kind().to_lowercase();
            let relative = Path::new("objects")
                .join(phase)
                .join(format!("{:02}-{kind}-{name}.yaml", i + 1));
            let yaml = crate::manifests::to_yaml(redacted(object));
            let path = env.writer.write_dry_run_file(&relative, yaml.as_bytes())?;
            env.out.step(
                "dryrun",
                &format!("Would apply {} ({})", object.describe(), path.display()),
                json!({ "object": object.describe(), "path": path, "origin": phase }),
            );
        }
        Ok(())
    }

    fn upload_certs(&self, env: &mut Env, upload: &Upload) -> Result<()> {
        self.apply(env, "upload-certs", upload.all())
    }

    fn reusable_token(
        &self,
        _: &Env,
        _: &BootstrapToken,
    ) -> Result<Option<(Token, Option<String>)>> {
        Ok(None)
    }

    fn verify_signed(&self, _: &Env, _: &Token) -> Result<()> {
        Ok(())
    }

    fn mark_control_plane(&self, _: &Env, _: &[Taint]) -> Result<()> {
        Ok(())
    }

    fn wait_control_plane(&self, env: &mut Env) -> Result<()> {
        env.out.step(
            "dryrun",
            "Would wait for the kubelet and the control-plane static Pods to be healthy",
            json!({ "dryRun": true }),
        );
        self.apply(env, "wait-control-plane", objects::cluster_admins()?)
    }

    fn start_kubelet(&self, env: &mut Env, _: bool) -> Result<()> {
        env.out.step(
            "kubelet-start",
            "Would (re)start the kubelet",
            json!({ "dryRun": true }),
        );
        Ok(())
    }

    fn restart_kubelet(&self, _: &Env, _: &str) {}

    fn wait_tls_bootstrap(&self, _: &mut Env, _: &Path) -> Result<()> {
        Ok(())
    }

    fn join_etcd(&self, env: &mut Env, rendered: &str) -> Result<()> {
        let urls = super::join::EtcdUrls::of(rendered)?;
        let node = &env.cfg.init.node_registration.name;
        env.out.step(
            "etcd-join",
            &format!(
                "Would add {node} ({}) to etcd as a learner and promote it",
                urls.peer
            ),
            json!({ "peerURL": urls.peer }),
        );
        Ok(())
    }

    fn approve_serving(&self, env: &Env, phase: &str) -> Result<()> {
        env.out.step(
            phase,
            "Would approve this node's kubelet serving certificate request",
            json!({ "dryRun": true }),
        );
        Ok(())
    }

    fn finish(&self, env: &Env, _: Option<&str>) {
        if let Some(dir) = env.writer.dry_run_dir() {
            env.out.step(
                "dryrun",
                &format!(
                    "Finished dry-running successfully; the files are in {:?}, the node is untouched",
                    dir.display().to_string()
                ),
                json!({ "dryRunDir": dir, "finished": true }),
            );
        }
    }
}
