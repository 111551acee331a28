//! Each command, from its parsed flags to the workflow or domain function that does it.

use anyhow::Result;
use clap::CommandFactory;
use std::path::Path;

use super::{
    ApproverArgs, CertsCommand, CertsConfig, Cli, ClusterAccess, Command, ConfigCommand,
    EncryptionCommand, EndpointCommand, ExecAsArgs, Global, ImagesCommand, InitArgs, InitFlags,
    InitSubcommand, JoinArgs, JoinSubcommand, KubeconfigCommand, PrintCommand, TokenCommand,
};
use crate::config::{self, CertificateKey, Token};
use crate::node::Layout;
use crate::output::Output;
use crate::workflow::certs::{ConfigSource, RenewOptions};
use crate::workflow::{self, Env, Selection};

pub fn run(cli: Cli) -> Result<()> {
    let out = Output {
        format: cli.global.output,
    };
    let global = &cli.global;
    match cli.command {
        Command::Init(args) => init(global, *args, out),
        Command::Join(args) => join(global, *args, out),
        Command::Config(command) => config_command(global, command, out),
        Command::Certs(command) => certs(global, command, out),
        Command::Token(command) => token(global, command, out),
        Command::Encryption(EncryptionCommand::Rotate { step, source }) => {
            let options = workflow::encryption::RotateOptions {
                source: config_source(global, source),
                step,
            };
            workflow::encryption::rotate(options, &global.kubernetes_dir, &global.kubelet_dir, out)
        }
        Command::Kubeconfig(command) => kubeconfig(global, command, out),
        Command::Upgrade(command) => {
            super::upgrade::run(command, &global.kubernetes_dir, &global.kubelet_dir, out)
        }
        Command::Reset {
            force,
            dry_run,
            cert_dir,
        } => {
            let pki = cert_dir.unwrap_or_else(|| global.kubernetes_dir.join("pki"));
            let layout = Layout::new(
                &global.kubernetes_dir,
                &global.kubelet_dir,
                &pki,
                Path::new("/var/lib/etcd"),
            );
            workflow::reset::run(layout, out, force, dry_run)
        }
        Command::Approver(args) => approver(args),
        Command::ExecAs(args) => Err(exec_as(args)),
        Command::Endpoint(command) => endpoint(command),
        Command::Version => {
            version(out);
            Ok(())
        }
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "kubeforge",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

/// The config of an init: the file and the flags, validated before anything is written.
fn load(global: &Global, flags: &InitFlags) -> Result<config::Config> {
    Ok(config::load(
        flags.config.as_deref(),
        &flags.overrides(),
        &global.kubernetes_dir,
    )?)
}

fn init(global: &Global, args: InitArgs, out: Output) -> Result<()> {
    let (flags, selection) = match args.phase {
        None => (args.flags, Selection::default()),
        Some(InitSubcommand::Phase { name, sub, flags }) => (
            flags,
            Selection {
                phase: Some(name),
                child: sub,
                skip: Vec::new(),
            },
        ),
    };
    let cfg = load(global, &flags)?;
    let selection = Selection {
        skip: cfg.init.skip_phases.clone(),
        ..selection
    };
    let env = Env::open(
        cfg,
        &global.kubernetes_dir,
        &global.kubelet_dir,
        flags.templates.clone(),
        out,
    )?;
    workflow::init::run(env, &selection)
}

fn join(global: &Global, args: JoinArgs, out: Output) -> Result<()> {
    let (flags, selection) = match args.phase {
        None => (args.flags, Selection::default()),
        Some(JoinSubcommand::Phase { name, flags }) => (
            flags,
            Selection {
                phase: Some(name),
                ..Selection::default()
            },
        ),
    };
    let request = config::join::JoinOptions::from(flags).check()?;
    workflow::join::run(
        request,
        &global.kubernetes_dir,
        &global.kubelet_dir,
        out,
        &selection,
    )
}

fn config_command(global: &Global, command: ConfigCommand, out: Output) -> Result<()> {
    match command {
        ConfigCommand::Print(PrintCommand::InitDefaults) => {
            print!("{}", config::print_init_defaults());
        }
        ConfigCommand::Print(PrintCommand::UpgradeDefaults) => {
            print!("{}", config::upgrade::print_defaults());
        }
        ConfigCommand::Validate { config: path } => {
            config::load(Some(&path), &Default::default(), &global.kubernetes_dir)?;
            println!("ok");
        }
        ConfigCommand::Images(ImagesCommand::List { flags }) => {
            let images = crate::manifests::images(&load(global, &flags)?);
            if out.json() {
                out.print_json(&serde_json::json!({ "images": images }));
            } else {
                images.iter().for_each(|i| println!("{i}"));
            }
        }
        ConfigCommand::Images(ImagesCommand::Pull { flags }) => {
            let cfg = config::load(
                flags.config.as_deref(),
                &flags.overrides(),
                &global.kubernetes_dir,
            )?;
            crate::images::pull_command(&cfg, &out)?;
        }
    }
    Ok(())
}

fn config_source(global: &Global, source: CertsConfig) -> ConfigSource {
    ConfigSource {
        file: source.config,
        kubeconfig: source
            .kubeconfig
            .unwrap_or_else(|| global.kubernetes_dir.join("admin.conf")),
        cert_dir: source.cert_dir,
    }
}

fn certs(global: &Global, command: CertsCommand, out: Output) -> Result<()> {
    let kdir = &global.kubernetes_dir;
    match command {
        CertsCommand::Renew {
            name,
            source,
            kubeconfig_dir,
            no_restart,
        } => {
            let options = RenewOptions {
                name,
                source: config_source(global, source),
                kubeconfig_dir,
                restart: !no_restart,
            };
            workflow::certs::run(options, kdir, &global.kubelet_dir, out)
        }
        CertsCommand::CheckExpiration { source } => {
            let source = config_source(global, source);
            let (cfg, _) = workflow::certs::load_config(&source, kdir, &out, "check-expiration")?;
            crate::certs::expiration::report(&cfg, kdir, out)
        }
        CertsCommand::GenerateCsr {
            config,
            cert_dir,
            kubeconfig_dir,
        } => {
            let mut cfg = config::load(config.as_deref(), &Default::default(), kdir)?;
            if let Some(dir) = cert_dir {
                cfg.cluster.certificates_dir = dir;
            }
            let kubeconfig_dir = kubeconfig_dir.unwrap_or_else(|| kdir.clone());
            workflow::certs::generate_csr(&cfg, kdir, &kubeconfig_dir, out)
        }
        CertsCommand::CertificateKey => {
            println!("{}", CertificateKey::generate());
            Ok(())
        }
    }
}

fn kubeconfig(global: &Global, command: KubeconfigCommand, out: Output) -> Result<()> {
    let KubeconfigCommand::User {
        client_name,
        organizations,
        validity_period,
        token,
        source,
    } = command;
    let validity = config::GoDuration::parse(&validity_period)
        .map_err(|e| crate::BadInput(format!("--validity-period: {e}")))?;
    let source = config_source(global, source);
    let quiet = Output {
        format: crate::output::Format::Json,
    };
    let (cfg, _) =
        workflow::certs::load_config(&source, &global.kubernetes_dir, &quiet, "kubeconfig")?;
    let request = crate::kubeconfig::user::Request {
        client_name,
        organizations,
        validity: validity.0,
        token,
    };
    let layout = Layout::new(
        &global.kubernetes_dir,
        &global.kubelet_dir,
        Path::new(&cfg.cluster.certificates_dir),
        Path::new("/var/lib/etcd"),
    );
    let text = crate::kubeconfig::user::kubeconfig(
        &cfg,
        &layout,
        &request,
        time::OffsetDateTime::now_utc(),
    )?;
    if out.json() {
        out.print_json(&serde_json::json!({ "kubeconfig": text }));
    } else {
        print!("{text}");
    }
    Ok(())
}

fn token(global: &Global, command: TokenCommand, out: Output) -> Result<()> {
    use crate::cluster::tokens;
    let admin = |access: ClusterAccess| {
        access
            .kubeconfig
            .unwrap_or_else(|| global.kubernetes_dir.join("admin.conf"))
    };
    match command {
        TokenCommand::Create { token, access } => {
            tokens::create(&token.into(), &admin(access), &global.kubernetes_dir, out)
        }
        TokenCommand::List { access } => tokens::list(&admin(access), out),
        TokenCommand::Delete { ids, access } => tokens::delete(&ids, &admin(access), out),
        TokenCommand::Generate => {
            println!("{}", Token::generate());
            Ok(())
        }
    }
}

fn version(out: Output) {
    let version = env!("CARGO_PKG_VERSION");
    if out.json() {
        out.print_json(&serde_json::json!({
            "kubeforgeVersion": version,
            "defaultKubernetesVersion": config::DEFAULT_KUBERNETES_VERSION,
            "supportedKubernetesVersions": config::SUPPORTED_VERSIONS,
        }));
    } else {
        println!(
            "kubeforge version {version} (kubeadm v1beta4 compatible; Kubernetes {}, default {})",
            config::SUPPORTED_VERSIONS,
            config::DEFAULT_KUBERNETES_VERSION
        );
    }
}

/// For the loops that run as their container's PID 1 (the approver, the endpoint sync): the
/// kernel ignores a signal PID 1 has no handler for, so without one every stop of their pod
/// (a restart, a reset, an upgrade) waits out its grace period before SIGKILL. They hold no
/// state a sudden exit could break.
fn exit_on_sigterm() {
    extern "C" fn exit_now(_: nix::libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { nix::libc::_exit(0) }
    }
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(exit_now),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    for signal in [nix::sys::signal::SIGTERM, nix::sys::signal::SIGINT] {
        // SAFETY: the handler only calls _exit.
        if let Err(e) = unsafe { nix::sys::signal::sigaction(signal, &action) } {
            tracing::warn!("no handler for {signal}: a stop waits out its grace period ({e})");
        }
    }
}

/// Returns only when the component could not be started.
fn exec_as(args: ExecAsArgs) -> anyhow::Error {
    crate::launcher::run(&crate::launcher::Launch {
        uid: args.uid,
        gid: args.gid,
        reads: args.reads,
        command: args.command,
    })
}

fn approver(args: ApproverArgs) -> Result<()> {
    let interval = std::time::Duration::from_secs(args.interval_seconds.max(1));
    if let Some(path) = &args.check_heartbeat {
        // Six passes missed, plus a slow API call's worth.
        return crate::kubelet::approver::check_heartbeat(
            path,
            interval * 6 + interval.max(std::time::Duration::from_secs(60)),
        );
    }
    exit_on_sigterm();
    crate::block_on(crate::kubelet::approver::run(
        &args.kubeconfig,
        interval,
        args.heartbeat.as_deref(),
    ))
}

fn endpoint(command: EndpointCommand) -> Result<()> {
    let EndpointCommand::Sync {
        dir,
        ca,
        client_cert,
        master_socket,
        local,
        servers,
        interval_seconds,
        once,
    } = command;
    if !once {
        exit_on_sigterm();
    }
    crate::endpoint::sync::run(&crate::endpoint::sync::SyncOptions {
        dir,
        ca,
        client_cert,
        master_socket,
        local,
        servers,
        interval: std::time::Duration::from_secs(interval_seconds.max(1)),
        once,
    })
}
