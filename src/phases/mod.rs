//! `init` (and later `join`, `upgrade`, `reset`) as ordered lists of named, re-runnable phases.
//! Every phase has the same shape; `kubeforge init phase <name> [sub]` runs one alone and
//! `--skip-phases name` or `name/sub` leaves some out, with kubeadm's names.

mod certs;
mod cluster;
mod join;
mod kubeconfig;
mod kubelet;
mod manifests;
mod preflight;
pub mod reset;
mod wait;

use anyhow::Result;
use time::OffsetDateTime;

use crate::config::Config;
use crate::host::{HostWriter, Layout, Outcome};
use crate::output::Output;

/// What every phase works with.
pub struct Context {
    pub cfg: Config,
    pub layout: Layout,
    pub writer: HostWriter,
    pub out: Output,
    /// One instant for the whole run, so every certificate of a run shares its NotBefore.
    pub now: OffsetDateTime,
    /// `--templates DIR`: manifest templates that replace the built-in ones.
    pub templates: Option<std::path::PathBuf>,
    /// The bootstrap tokens of this run (bootstrap-token), for the join command.
    pub tokens: Vec<crate::cluster::token::Token>,
    /// The key of the uploaded certificates (upload-certs), for the control-plane join command.
    pub certificate_key: Option<String>,
    /// The cluster phases' runtime and admin client, made by the first one that needs them.
    pub api: Option<(tokio::runtime::Runtime, kube::Client)>,
    /// A join's discovered cluster and token (None for init).
    pub joining: Option<crate::join::Joining>,
}

impl Context {
    /// Writes one host file through the writer and reports it in dry-run mode.
    pub fn write(
        &mut self,
        phase: &str,
        path: &std::path::Path,
        data: &[u8],
        mode: u32,
    ) -> Result<Outcome> {
        let outcome = self.writer.write(path, data, mode)?;
        if outcome == Outcome::WouldWrite {
            self.out.step(
                "dryrun",
                &format!(
                    "Would write file {:?} (mode {mode:04o})",
                    path.display().to_string()
                ),
                serde_json::json!({ "path": path, "mode": format!("{mode:04o}"), "origin": phase }),
            );
        }
        if let Outcome::Replaced { backup } = &outcome {
            tracing::info!(path = %path.display(), backup = %backup.display(), "replaced; old content backed up");
        }
        Ok(outcome)
    }
}

/// Which sub-phases of a phase to run.
pub struct Selection<'a> {
    pub phase: &'a str,
    pub only: Option<&'a str>,
    pub skip: &'a [String],
}

impl Selection<'_> {
    pub fn wants(&self, sub: &str) -> bool {
        let full = format!("{}/{sub}", self.phase);
        self.only.is_none_or(|o| o == "all" || o == sub) && !self.skip.contains(&full)
    }
}

pub struct Phase {
    pub name: &'static str,
    pub description: &'static str,
    /// (name, description) of each sub-phase; `all` is implied.
    pub subphases: fn() -> Vec<(String, String)>,
    pub run: fn(&mut Context, &Selection) -> Result<()>,
}

pub const INIT: &[Phase] = &[
    preflight::PHASE,
    certs::PHASE,
    kubeconfig::PHASE,
    manifests::ETCD,
    manifests::CONTROL_PLANE,
    kubelet::PHASE,
    wait::PHASE,
    cluster::UPLOAD_CONFIG,
    cluster::UPLOAD_CERTS,
    cluster::MARK_CONTROL_PLANE,
    cluster::BOOTSTRAP_TOKEN,
    cluster::KUBELET_FINALIZE,
    cluster::ADDON,
    cluster::SHOW_JOIN_COMMAND,
];

/// A join (kubeadm's names); the control-plane phases skip themselves for a worker.
pub const JOIN: &[Phase] = &[
    preflight::PHASE,
    join::CONTROL_PLANE_PREPARE,
    join::KUBELET_START,
    join::ETCD_JOIN,
    join::WAIT_CONTROL_PLANE,
    join::CONTROL_PLANE_JOIN,
];

pub use join::joined;

pub fn find(phases: &'static [Phase], name: &str) -> Option<&'static Phase> {
    phases.iter().find(|p| p.name == name)
}

/// `kubeforge init phase --help`: every phase with its sub-phases.
pub fn help_table(phases: &[Phase]) -> String {
    let mut s = String::from("Phases:\n");
    for p in phases {
        s.push_str(&format!("  {:<20} {}\n", p.name, p.description));
        for (name, description) in (p.subphases)() {
            s.push_str(&format!("    {:<18} {description}\n", format!("/{name}")));
        }
    }
    s
}

/// kubeadm's rule: every `--skip-phases` entry names a phase or `phase/sub-phase`.
pub fn check_skip(phases: &[Phase], skip: &[String]) -> Result<()> {
    for entry in skip {
        let (name, sub) = entry
            .split_once('/')
            .map_or((entry.as_str(), None), |(n, s)| (n, Some(s)));
        let known = phases
            .iter()
            .find(|p| p.name == name)
            .is_some_and(|p| sub.is_none_or(|s| (p.subphases)().iter().any(|(n, _)| n == s)));
        if !known {
            anyhow::bail!(crate::BadInput(format!("invalid phase name: {entry}")));
        }
    }
    Ok(())
}

/// Runs `phases` in order, leaving out what `skip` names.
pub fn run_all(ctx: &mut Context, phases: &[Phase], skip: &[String]) -> Result<()> {
    for phase in phases {
        if skip.iter().any(|s| s == phase.name) {
            ctx.out.step(
                phase.name,
                "Skipped (--skip-phases)",
                serde_json::json!({"skipped": true}),
            );
            continue;
        }
        let sel = Selection {
            phase: phase.name,
            only: None,
            skip,
        };
        (phase.run)(ctx, &sel)?;
        crate::fault::after_phase(phase.name);
    }
    Ok(())
}
