//! What every phase of init and join works with: the validated config, the node's layout, the one
//! host writer, the effects on the cluster and the node's services (live, or a dry-run's), the
//! output, and one instant for the whole run.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{Context as _, Result};
use serde_json::json;
use time::OffsetDateTime;

use super::effects::{self, Effects};
use crate::config::Config;
use crate::manifests::{patches, Component, Renderer};
use crate::node::{File, HostWriter, Layout, Outcome};
use crate::output::Output;

pub struct Env {
    pub cfg: Config,
    pub layout: Layout,
    pub writer: HostWriter,
    effects: Rc<dyn Effects>,
    pub out: Output,
    /// One instant for the whole run, so every certificate of a run shares its NotBefore.
    pub now: OffsetDateTime,
    /// `--templates DIR`: manifest templates that replace the built-in ones.
    pub templates: Option<PathBuf>,
    /// Whether `write` names a file it replaced (init and join: the node held something else;
    /// an upgrade replaces files by design and says so itself).
    pub name_replaced: bool,
    /// The files this run wrote: replacing one of them again (kubelet-finalize's kubelet.conf) is
    /// the run's own step, not worth naming.
    written: std::collections::BTreeSet<PathBuf>,
}

impl Env {
    /// The node laid out for a validated config, its patches checked (every patch file read and
    /// every manifest patched before anything is written), the writer opened — and, once, the
    /// choice between changing the node and a dry-run.
    pub fn open(
        cfg: Config,
        kubernetes_dir: &Path,
        kubelet_dir: &Path,
        templates: Option<PathBuf>,
        out: Output,
    ) -> Result<Env> {
        let etcd_data_dir = cfg
            .cluster
            .etcd
            .local
            .as_ref()
            .map_or_else(|| "/var/lib/etcd".into(), |l| l.data_dir.clone());
        let layout = Layout::new(
            kubernetes_dir,
            kubelet_dir,
            Path::new(&cfg.cluster.certificates_dir),
            Path::new(&etcd_data_dir),
        );
        check_patches(&cfg, &layout, templates.as_deref())?;
        crate::kube::set_call_timeout(cfg.init.timeouts.kubernetes_api_call.0);
        let dry_run = cfg.init.dry_run;
        let mut writer = HostWriter::open(&layout, dry_run).context("preparing the node")?;
        let hardened = cfg.security.hardened();
        crate::rootless::grant_all(&mut writer, &cfg, &layout, hardened);
        let effects: Rc<dyn Effects> = match writer.dry_run_dir() {
            Some(dir) => {
                out.step(
                    "dryrun",
                    &format!(
                        "Writing files into {:?} instead of the node",
                        dir.display().to_string()
                    ),
                    json!({ "dryRunDir": dir }),
                );
                Rc::new(effects::DryRun)
            }
            None => Rc::new(effects::Live::default()),
        };
        let now = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("0 is a valid nanosecond");
        Ok(Env {
            cfg,
            layout,
            writer,
            effects,
            out,
            now,
            templates,
            name_replaced: true,
            written: Default::default(),
        })
    }

    /// The effects of this run, to call with the Env: `env.effects().apply(env, …)`.
    pub fn effects(&self) -> Rc<dyn Effects> {
        Rc::clone(&self.effects)
    }

    pub fn renderer(&self) -> Renderer<'_> {
        Renderer {
            cfg: &self.cfg,
            layout: &self.layout,
            templates: self.templates.as_deref(),
        }
    }

    /// Profile hardened: the account `component` runs as, made now when missing, so that its
    /// manifest names the IDs the account has.
    pub fn component_account(&mut self, component: Component) -> Result<()> {
        if self.cfg.security.hardened() {
            self.writer.account(component.account())?;
        }
        Ok(())
    }

    /// Writes one host file through the writer; a dry-run reports it.
    pub fn write(&mut self, phase: &str, file: &File) -> Result<Outcome> {
        let outcome = self.writer.write(&file.path, &file.contents, file.mode)?;
        let (path, mode) = (&file.path, file.mode);
        let ours = !self.written.insert(path.clone());
        match &outcome {
            Outcome::WouldWrite => self.out.step(
                "dryrun",
                &format!(
                    "Would write file {:?} (mode {mode:04o})",
                    path.display().to_string()
                ),
                json!({ "path": path, "mode": format!("{mode:04o}"), "origin": phase }),
            ),
            Outcome::Replaced { backup } if self.name_replaced && !ours => self.out.step(
                phase,
                &format!(
                    "Replaced {:?}; its previous content is kept in {:?}",
                    path.display().to_string(),
                    backup.display().to_string()
                ),
                json!({ "path": path, "replaced": true, "backup": backup }),
            ),
            Outcome::Replaced { backup } => {
                tracing::info!(path = %path.display(), backup = %backup.display(), "replaced; old content backed up");
            }
            _ => {}
        }
        Ok(outcome)
    }

    /// Writes `files`; whether any of them changed.
    pub fn write_all(&mut self, phase: &str, files: &[File]) -> Result<bool> {
        let mut changed = false;
        for file in files {
            changed |= !matches!(self.write(phase, file)?, Outcome::Unchanged);
        }
        Ok(changed)
    }

    /// The end of a run: a dry-run says where its files are, a real one prints `closing`.
    pub fn finish(&self, closing: Option<&str>) {
        self.effects().finish(self, closing);
    }
}

fn check_patches(cfg: &Config, layout: &Layout, templates: Option<&Path>) -> Result<()> {
    let Some(dir) = cfg
        .init
        .patches
        .as_ref()
        .filter(|p| !p.directory.is_empty())
    else {
        return Ok(());
    };
    for target in patches::TARGETS {
        patches::load(Path::new(&dir.directory), target)?;
    }
    let renderer = Renderer {
        cfg,
        layout,
        templates,
    };
    for component in Component::ALL {
        if component != Component::Etcd || !cfg.cluster.is_external_etcd() {
            renderer.render(component)?;
        }
    }
    Ok(())
}
