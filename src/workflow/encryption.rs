//! `kubeforge encryption rotate`: the Kubernetes documentation's key rotation for Secrets
//! encrypted at rest (docs/operations.md). `add` puts a new key second (readable, not used for
//! writing), `promote` puts it first (writes use it), `rewrite` stores every Secret again (so all
//! are under the new key), `prune` drops the old key; after each change of the file this node's
//! API server is restarted and waited for, as `certs renew` does.
//!
//! One control-plane node: every step in one run. Several: `--step` on each node in turn; the
//! record `kube-system/kubeforge-encryption-rotation` carries the new file to the other nodes
//! and what each API server was restarted with, so `promote` refuses while another API server
//! cannot read the new key yet, and `rewrite` while one still writes with the old one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde_json::json;
use time::OffsetDateTime;

use super::certs::{load_config, restart_and_wait, ConfigSource};
use super::{Data, Phase, Selection, Step};
use crate::config::Config;
use crate::encryption::record::{self, Record};
use crate::encryption::{self, EncryptionConfiguration, Key, Stage};
use crate::manifests::Component;
use crate::node::{HostWriter, Layout, Outcome};
use crate::output::Output;
use crate::BadInput;

pub const STEPS: [&str; 4] = ["add", "promote", "rewrite", "prune"];

#[derive(Debug, Clone)]
pub struct RotateOptions {
    pub source: ConfigSource,
    /// One of `STEPS`; none: all that remain, on a cluster with one control-plane node.
    pub step: Option<String>,
}

pub struct RotateData {
    cfg: Config,
    layout: Layout,
    writer: HostWriter,
    out: Output,
    client: kube::Client,
    /// The nodes running an API server.
    nodes: Vec<String>,
    /// The steps this run makes.
    steps: Vec<&'static str>,
    now: OffsetDateTime,
}

impl Data for RotateData {
    fn out(&self) -> &Output {
        &self.out
    }
}

/// The rotation's steps; a run makes those in `RotateData::steps`.
pub fn phases() -> Vec<Phase<RotateData>> {
    vec![
        Phase::new(
            "add",
            "Add a new key, second: every API server can read with it",
        )
        .run_if(|d: &RotateData| d.steps.contains(&"add"))
        .run(add),
        Phase::new(
            "promote",
            "Make the new key first: the API servers write with it",
        )
        .run_if(|d: &RotateData| d.steps.contains(&"promote"))
        .run(promote),
        Phase::new(
            "rewrite",
            "Store every Secret again, encrypted with the new key",
        )
        .run_if(|d: &RotateData| d.steps.contains(&"rewrite"))
        .run(rewrite),
        Phase::new("prune", "Drop the old key")
            .run_if(|d: &RotateData| d.steps.contains(&"prune"))
            .run(prune),
    ]
}

impl RotateData {
    fn path(&self) -> PathBuf {
        encryption::path(&self.layout.pki_dir)
    }

    fn current(&self) -> Result<EncryptionConfiguration> {
        EncryptionConfiguration::read(&self.path())?
            .ok_or_else(|| anyhow::anyhow!("{} disappeared", self.path().display()))
    }

    fn record(&self) -> Result<Record> {
        crate::block_on(record::read(&self.client))
    }

    fn node(&self) -> &str {
        &self.cfg.init.node_registration.name
    }

    /// `config` written; this node's API server restarted unless it already runs with it; the
    /// record updated with what this node loaded (and, from `add`, the file for the other nodes).
    fn apply(
        &mut self,
        step: &str,
        config: &EncryptionConfiguration,
        record: &Record,
    ) -> Result<()> {
        let (path, text) = (self.path(), config.to_yaml());
        let outcome = self
            .writer
            .write(&path, text.as_bytes(), encryption::MODE)?;
        let names = key_names(config);
        let loaded = record.loaded.get(self.node()) == Some(&names);
        self.out.step(
            step,
            &format!("{}: keys {names} (the first encrypts)", path.display()),
            json!({ "path": path, "keys": names, "changed": !matches!(outcome, Outcome::Unchanged) }),
        );
        if !matches!(outcome, Outcome::Unchanged) || !loaded {
            let why = format!("it reads the keys {names}");
            let kdir = self.layout.kubernetes_dir.clone();
            restart_and_wait(
                &self.cfg,
                &self.layout,
                &kdir,
                &self.out,
                Component::KubeApiserver,
                &why,
            )?;
        }
        let mut entries = vec![(record::loaded_key(self.node()), Some(names))];
        if step == "add" {
            entries.push((encryption::FILE.to_string(), Some(text)));
        }
        crate::block_on(record::write(&self.client, &entries))
    }

    /// Refuses unless every API server runs with `keys`, in this order or (`any_order`) any.
    fn require_loaded(
        &self,
        record: &Record,
        keys: &str,
        any_order: bool,
        why: &str,
    ) -> Result<()> {
        let lacking = lacking(&self.nodes, self.node(), record, keys, any_order);
        if !lacking.is_empty() {
            bail!(BadInput(format!("not yet on every control-plane node: {lacking:?} do not run with the keys {keys}; {why}")));
        }
        Ok(())
    }
}

/// The nodes but `this` whose API server does not run with `keys` (comma-separated), in this
/// order or (`any_order`) any.
fn lacking(
    nodes: &[String],
    this: &str,
    record: &Record,
    keys: &str,
    any_order: bool,
) -> Vec<String> {
    let sorted = |s: &str| {
        let mut v: Vec<&str> = s.split(',').collect();
        v.sort();
        v.join(",")
    };
    nodes
        .iter()
        .filter(|n| *n != this)
        .filter(|n| !match record.loaded.get(*n) {
            Some(l) if any_order => sorted(l) == sorted(keys),
            Some(l) => l == keys,
            None => false,
        })
        .cloned()
        .collect()
}

fn key_names(config: &EncryptionConfiguration) -> String {
    let names: Vec<&str> = config.keys().iter().map(|k| k.name.as_str()).collect();
    names.join(",")
}

/// The new key second: the one another node added (the record's), else a new one. A node that
/// added another key meanwhile takes the record's (nothing was written with either key yet:
/// `promote` needs every node to hold the same keys).
fn add(d: &mut RotateData, step: &Step) -> Result<()> {
    let mut config = d.current()?;
    let record = d.record()?;
    let shared = record
        .target
        .as_deref()
        .and_then(|t| EncryptionConfiguration::parse(t, "the rotation record").ok())
        .filter(|t| t.stage() == Stage::Added && t.keys()[0] == config.keys()[0]);
    match (config.stage(), shared) {
        (Stage::Single | Stage::Added, Some(shared)) => config = shared,
        (Stage::Single, None) => config.add(Key::generate(d.now)),
        _ => {}
    }
    d.apply(step.name, &config, &record)
}

fn promote(d: &mut RotateData, step: &Step) -> Result<()> {
    let mut config = d.current()?;
    if config.stage() == Stage::Single {
        bail!(BadInput("there is no second key to promote: run `kubeforge encryption rotate --step add` on every control-plane node first".into()));
    }
    let record = d.record()?;
    let why = "run `kubeforge encryption rotate --step add` there first: an API server that cannot read the new key could not read the Secrets written with it";
    d.require_loaded(&record, &key_names(&config), true, why)?;
    config.promote();
    d.apply(step.name, &config, &record)
}

fn rewrite(d: &mut RotateData, step: &Step) -> Result<()> {
    let config = d.current()?;
    if config.stage() != Stage::Promoted {
        bail!(BadInput("the new key is not first yet: run `--step add`, then `--step promote`, on every control-plane node".into()));
    }
    let record = d.record()?;
    let why = "run `kubeforge encryption rotate --step promote` there first: it would still write with the old key";
    d.require_loaded(&record, &key_names(&config), false, why)?;
    if record.loaded.get(d.node()) != Some(&key_names(&config)) {
        d.apply(step.name, &config, &record)?;
    }
    let count = crate::block_on(encryption::rewrite::rewrite_all(&d.client))?;
    let first = config.keys()[0].name.clone();
    d.out.step(
        step.name,
        &format!("Rewrote {count} Secrets: all are encrypted with {first}"),
        json!({ "secrets": count, "key": first }),
    );
    // Every node holds the new key by now: the record forgets the file (and its keys).
    let entries = [
        (record::rewritten_key().to_string(), Some(first)),
        (encryption::FILE.to_string(), None),
    ];
    crate::block_on(record::write(&d.client, &entries))
}

fn prune(d: &mut RotateData, step: &Step) -> Result<()> {
    let mut config = d.current()?;
    let record = d.record()?;
    match config.stage() {
        Stage::Added => bail!(BadInput(
            "the new key is not first yet: promote and rewrite before dropping the old key".into()
        )),
        Stage::Promoted if record.rewritten.as_deref() != Some(&config.keys()[0].name) => {
            bail!(BadInput("the Secrets were not rewritten with the new key yet: run `kubeforge encryption rotate --step rewrite` (once, on any control-plane node); dropping the old key now would leave the Secrets it encrypts unreadable".into()))
        }
        _ => config.prune(),
    }
    d.apply(step.name, &config, &record)
}

/// The steps a run without `--step` makes, from where the file stands.
fn remaining(stage: Stage) -> Vec<&'static str> {
    match stage {
        Stage::Single => STEPS.to_vec(),
        Stage::Added => STEPS[1..].to_vec(),
        Stage::Promoted => STEPS[2..].to_vec(),
    }
}

pub fn rotate(
    options: RotateOptions,
    kubernetes_dir: &Path,
    kubelet_dir: &Path,
    out: Output,
) -> Result<()> {
    let (cfg, _) = load_config(&options.source, kubernetes_dir, &out, "encryption")?;
    let layout = Layout::new(
        kubernetes_dir,
        kubelet_dir,
        Path::new(&cfg.cluster.certificates_dir),
        Path::new("/var/lib/etcd"),
    );
    let path = encryption::path(&layout.pki_dir);
    let Some(config) = EncryptionConfiguration::read(&path)? else {
        bail!(BadInput(format!("{} does not exist: this node does not encrypt Secrets at rest (Security encryptionAtRest: true at init)", path.display())));
    };
    let admin = options.source.kubeconfig.clone();
    let client = crate::block_on(crate::kube::client(&admin, None))?;
    let nodes = crate::block_on(record::api_server_nodes(&client))?;
    let steps = match options.step.as_deref() {
        Some(step) => vec![*STEPS.iter().find(|s| **s == step).ok_or_else(|| BadInput(format!("--step {step:?}: one of {STEPS:?}")))?],
        None if nodes.len() > 1 => bail!(BadInput(format!("{} control-plane nodes ({}): rotate with `--step add` on each node, then `--step promote` on each, `--step rewrite` on one, `--step prune` on each (docs/operations.md)", nodes.len(), nodes.join(", ")))),
        None => remaining(config.stage()),
    };
    let mut writer = HostWriter::open(&layout, false)?;
    let non_root = crate::rootless::node_runs_non_root(&layout);
    crate::rootless::grant_all(&mut writer, &cfg, &layout, non_root);
    let mut data = RotateData {
        writer,
        now: OffsetDateTime::now_utc(),
        cfg,
        layout,
        out,
        client,
        nodes,
        steps,
    };
    super::run(&phases(), &mut data, &Selection::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// promote needs every other API server to hold both keys (either order: some may have
    /// promoted already); rewrite needs them all in the promoted order.
    #[test]
    fn a_step_waits_for_every_other_api_server() {
        let nodes: Vec<String> = ["cp1", "cp2", "cp3"].map(String::from).to_vec();
        let mut record = Record::default();
        record.loaded.insert("cp2".into(), "key-a,key-b".into());
        assert_eq!(
            lacking(&nodes, "cp1", &record, "key-a,key-b", true),
            ["cp3"]
        );
        record.loaded.insert("cp3".into(), "key-a".into());
        assert_eq!(
            lacking(&nodes, "cp1", &record, "key-a,key-b", true),
            ["cp3"]
        );
        record.loaded.insert("cp3".into(), "key-b,key-a".into());
        assert!(lacking(&nodes, "cp1", &record, "key-a,key-b", true).is_empty());
        assert_eq!(
            lacking(&nodes, "cp1", &record, "key-b,key-a", false),
            ["cp2"]
        );
        assert_eq!(
            lacking(&nodes, "cp2", &record, "key-a,key-b", false),
            ["cp1", "cp3"]
        );
        assert!(lacking(&["cp1".to_string()], "cp1", &record, "x", false).is_empty());
    }

    #[test]
    fn a_run_without_step_continues_where_the_file_stands() {
        assert_eq!(remaining(Stage::Single), STEPS);
        assert_eq!(remaining(Stage::Added), ["promote", "rewrite", "prune"]);
        assert_eq!(remaining(Stage::Promoted), ["rewrite", "prune"]);
    }
}
