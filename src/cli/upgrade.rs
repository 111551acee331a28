//! `kubeforge upgrade plan|apply|node|diff` with kubeadm's flags, merged over `--config`'s
//! UpgradeConfiguration the way kubeadm merges them: a flag given on the command line wins, lists
//! of ignored checks are joined.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::config::upgrade::{self as upgrade_config, UpgradeConfiguration};
use crate::output::Output;
use crate::workflow::upgrade::plan::ReadOptions;
use crate::workflow::upgrade::{self, Mode, UpgradeOptions};
use crate::workflow::Selection;

#[derive(Debug, Subcommand)]
pub enum UpgradeCommand {
    /// Check which versions are available to upgrade to and whether the cluster is upgradeable
    /// (from kubeforge's own version table: no network needed).
    Plan {
        /// The version to plan for (default: the newest patch of this minor and of the next).
        #[arg(value_name = "VERSION")]
        target: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Upgrade the control plane on this node to VERSION, then the cluster's configuration; rolls
    /// back by itself when a component does not come up.
    Apply(Box<ApplyCommand>),
    /// Upgrade this node (another control-plane node, or a worker) to the cluster's version.
    Node(Box<NodeCommand>),
    /// Show what the upgrade would change in this node's static pod manifests.
    Diff {
        #[arg(value_name = "VERSION")]
        target: Option<String>,
        /// How many lines of context in the diff (default 3).
        #[arg(short = 'c', long, value_name = "N")]
        context_lines: Option<usize>,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
    },
}

/// Flags `plan`, `apply` and `node` share.
#[derive(Debug, Args)]
pub struct Common {
    /// An UpgradeConfiguration (kubeadm.k8s.io/v1beta4).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The kubeconfig that talks to the cluster (default: <kubernetes-dir>/admin.conf).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Checks whose errors are shown as warnings (`all` for every check).
    #[arg(long, value_delimiter = ',', value_name = "CHECKS")]
    pub ignore_preflight_errors: Vec<String>,
    /// Upgrade etcd too (default true).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub etcd_upgrade: Option<bool>,
    /// Print the configuration the upgrade uses.
    #[arg(long)]
    pub print_config: bool,
    /// Allow upgrading to alpha, beta and release-candidate versions.
    #[arg(long)]
    pub allow_experimental_upgrades: bool,
    /// Allow upgrading to release-candidate versions.
    #[arg(long)]
    pub allow_release_candidate_upgrades: bool,
}

/// `phase` and `phase/child`, as `--skip-phases` names them.
fn phase_paths(mode: Mode) -> Vec<String> {
    let mut paths = Vec::new();
    for phase in upgrade::phases(mode) {
        paths.push(phase.name.clone());
        paths.extend(
            phase
                .children
                .iter()
                .map(|c| format!("{}/{}", phase.name, c.name)),
        );
    }
    paths
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ApplyCommand {
    #[command(subcommand)]
    pub phase: Option<ApplyPhase>,
    #[command(flatten)]
    pub args: ApplyArgs,
}

#[derive(Debug, Subcommand)]
pub enum ApplyPhase {
    /// Run one phase (`phase` or `phase/child`) of the apply workflow.
    #[command(after_help = crate::workflow::help_table(&upgrade::phases(Mode::Apply)))]
    Phase {
        /// The phase to run.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(phase_paths(Mode::Apply)))]
        name: String,
        #[command(flatten)]
        args: ApplyArgs,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeCommand {
    #[command(subcommand)]
    pub phase: Option<NodePhase>,
    #[command(flatten)]
    pub args: NodeArgs,
}

#[derive(Debug, Subcommand)]
pub enum NodePhase {
    /// Run one phase (`phase` or `phase/child`) of the node workflow.
    #[command(after_help = crate::workflow::help_table(&upgrade::phases(Mode::Node)))]
    Phase {
        /// The phase to run.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(phase_paths(Mode::Node)))]
        name: String,
        #[command(flatten)]
        args: NodeArgs,
    },
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The version to upgrade to (or apply.kubernetesVersion in --config).
    #[arg(value_name = "VERSION")]
    pub target: Option<String>,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub changes: Changes,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Go on despite the version policy's skippable errors and hand-edited manifests (implies
    /// --yes).
    #[arg(short = 'f', long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub changes: Changes,
}

/// Flags of the commands that change the node.
#[derive(Debug, Args)]
pub struct Changes {
    /// Change nothing; show every manifest diff and object change.
    #[arg(long)]
    pub dry_run: bool,
    /// Renew the certificates of the components that change (default true).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub certificate_renewal: Option<bool>,
    /// A directory of patches (kubeadm's names: kube-apiserver, etcd, kubeletconfiguration, …).
    #[arg(long, value_name = "DIR")]
    pub patches: Option<String>,
    /// Phases to skip (`phase` or `phase/child`).
    #[arg(long, value_delimiter = ',', value_name = "PHASES")]
    pub skip_phases: Vec<String>,
}

fn file(config: &Option<PathBuf>) -> Result<UpgradeConfiguration> {
    Ok(match config {
        Some(path) => upgrade_config::load(path)?,
        None => UpgradeConfiguration::default(),
    })
}

fn union(a: &[String], b: &[String]) -> Vec<String> {
    let mut all = a.to_vec();
    all.extend(b.iter().filter(|x| !a.contains(x)).cloned());
    all
}

fn patches(flag: &Option<String>, file: &Option<crate::config::Patches>) -> Option<String> {
    flag.clone()
        .or_else(|| file.as_ref().map(|p| p.directory.clone()))
        .filter(|d| !d.is_empty())
}

fn apply_options(args: ApplyArgs) -> Result<UpgradeOptions> {
    let f = file(&args.common.config)?;
    let a = &f.apply;
    let version = args
        .target
        .or_else(|| Some(a.kubernetes_version.clone()).filter(|v| !v.is_empty()));
    Ok(UpgradeOptions {
        mode: Mode::Apply,
        version,
        kubeconfig: args.common.kubeconfig,
        yes: args.yes,
        force: args.force || a.force_upgrade,
        dry_run: args.changes.dry_run || a.dry_run,
        etcd_upgrade: args.common.etcd_upgrade.unwrap_or(a.etcd_upgrade),
        certificate_renewal: args
            .changes
            .certificate_renewal
            .unwrap_or(a.certificate_renewal),
        allow_experimental: args.common.allow_experimental_upgrades
            || a.allow_experimental_upgrades,
        allow_rc: args.common.allow_release_candidate_upgrades || a.allow_rc_upgrades,
        print_config: args.common.print_config || a.print_config,
        patches: patches(&args.changes.patches, &a.patches),
        ignore_preflight_errors: union(
            &args.common.ignore_preflight_errors,
            &a.ignore_preflight_errors,
        ),
        skip_phases: if args.changes.skip_phases.is_empty() {
            a.skip_phases.clone()
        } else {
            args.changes.skip_phases
        },
        image_pull_policy: a.image_pull_policy.clone(),
        image_pull_serial: a.image_pull_serial,
        timeouts: f.timeouts.clone(),
    })
}

fn node_options(args: NodeArgs) -> Result<UpgradeOptions> {
    let f = file(&args.common.config)?;
    let n = &f.node;
    Ok(UpgradeOptions {
        mode: Mode::Node,
        version: None,
        kubeconfig: args.common.kubeconfig,
        yes: true,
        force: false,
        dry_run: args.changes.dry_run || n.dry_run,
        etcd_upgrade: args.common.etcd_upgrade.unwrap_or(n.etcd_upgrade),
        certificate_renewal: args
            .changes
            .certificate_renewal
            .unwrap_or(n.certificate_renewal),
        allow_experimental: false,
        allow_rc: false,
        print_config: args.common.print_config,
        patches: patches(&args.changes.patches, &n.patches),
        ignore_preflight_errors: union(
            &args.common.ignore_preflight_errors,
            &n.ignore_preflight_errors,
        ),
        skip_phases: if args.changes.skip_phases.is_empty() {
            n.skip_phases.clone()
        } else {
            args.changes.skip_phases
        },
        image_pull_policy: n.image_pull_policy.clone(),
        image_pull_serial: n.image_pull_serial,
        timeouts: f.timeouts.clone(),
    })
}

fn one_phase(path: &str) -> Selection {
    let (phase, child) = match path.split_once('/') {
        Some((phase, child)) => (phase, Some(child.to_string())),
        None => (path, None),
    };
    Selection {
        phase: Some(phase.to_string()),
        child,
        skip: Vec::new(),
    }
}

pub fn run(
    command: UpgradeCommand,
    kubernetes_dir: &Path,
    kubelet_dir: &Path,
    out: Output,
) -> Result<()> {
    match command {
        UpgradeCommand::Plan { target, common } => {
            let f = file(&common.config)?;
            let p = &f.plan;
            let options = ReadOptions {
                version: target
                    .or_else(|| Some(p.kubernetes_version.clone()).filter(|v| !v.is_empty())),
                kubeconfig: common.kubeconfig,
                etcd_upgrade: common.etcd_upgrade.unwrap_or(p.etcd_upgrade),
                ignore_preflight_errors: union(
                    &common.ignore_preflight_errors,
                    &p.ignore_preflight_errors,
                ),
                print_config: common.print_config || p.print_config,
                context_lines: 3,
                timeouts: f.timeouts.clone(),
            };
            upgrade::plan::plan(&options, kubernetes_dir, kubelet_dir, out)
        }
        UpgradeCommand::Apply(command) => {
            let (args, selection) = match command.phase {
                None => (command.args, Selection::default()),
                Some(ApplyPhase::Phase { name, args }) => (args, one_phase(&name)),
            };
            let opts = apply_options(args)?;
            upgrade::run(opts, selection, kubernetes_dir, kubelet_dir, out)
        }
        UpgradeCommand::Node(command) => {
            let (args, selection) = match command.phase {
                None => (command.args, Selection::default()),
                Some(NodePhase::Phase { name, args }) => (args, one_phase(&name)),
            };
            let opts = node_options(args)?;
            upgrade::run(opts, selection, kubernetes_dir, kubelet_dir, out)
        }
        UpgradeCommand::Diff {
            target,
            context_lines,
            config,
            kubeconfig,
        } => {
            let f = file(&config)?;
            let options = ReadOptions {
                version: target
                    .or_else(|| Some(f.diff.kubernetes_version.clone()).filter(|v| !v.is_empty())),
                kubeconfig,
                etcd_upgrade: true,
                ignore_preflight_errors: Vec::new(),
                print_config: false,
                context_lines: context_lines.or(f.diff.context_lines).unwrap_or(3),
                timeouts: f.timeouts.clone(),
            };
            upgrade::plan::diff(&options, kubernetes_dir, kubelet_dir, out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<UpgradeCommand, clap::Error> {
        #[derive(Parser)]
        struct Upgrade {
            #[command(subcommand)]
            command: UpgradeCommand,
        }
        Upgrade::try_parse_from([&["upgrade"], args].concat()).map(|u| u.command)
    }

    #[test]
    fn one_phase_of_apply_takes_its_path_and_the_version() {
        let Ok(UpgradeCommand::Apply(apply)) =
            parse(&["apply", "phase", "addon/coredns", "v1.36.3", "--yes"])
        else {
            panic!("not parsed as apply");
        };
        let Some(ApplyPhase::Phase { name, args }) = apply.phase else {
            panic!("no phase");
        };
        let selection = one_phase(&name);
        assert_eq!(selection.phase.as_deref(), Some("addon"));
        assert_eq!(selection.child.as_deref(), Some("coredns"));
        assert_eq!(args.target.as_deref(), Some("v1.36.3"));
        assert!(args.yes);
        // `apply VERSION` without `phase` is the whole workflow.
        let Ok(UpgradeCommand::Apply(whole)) = parse(&["apply", "v1.36.3"]) else {
            panic!("not parsed as apply");
        };
        assert!(whole.phase.is_none());
        assert_eq!(whole.args.target.as_deref(), Some("v1.36.3"));
    }

    #[test]
    fn an_unknown_phase_is_refused_with_the_known_ones() {
        let err = parse(&["node", "phase", "upload-config"]).err().unwrap();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(err.to_string().contains("kubelet-config"), "{err}");
        assert!(parse(&["node", "phase", "control-plane/etcd"]).is_ok());
    }
}
