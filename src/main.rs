mod cli;
mod cluster;
mod config;
mod etcd;
mod fault;
mod health;
mod host;
mod join;
mod kubeconfig;
mod kubelet;
mod output;
mod phases;
mod pki;
mod render;

use anyhow::{bail, Context as _, Result};
use clap::{CommandFactory, Parser};
use std::path::Path;
use std::process::ExitCode;

use cli::{
    CertsCommand, Cli, Command, ConfigCommand, ImagesCommand, InitFlags, InitSubcommand,
    JoinSubcommand, PrintCommand, TokenCommand,
};
use output::Output;

/// The single-threaded async runtime every network step runs on (one per command, or per phase
/// that talks to a server).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Bad input from the operator (as opposed to a failure at run time): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let level = match cli.global.verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        _ => LevelFilter::DEBUG,
    };
    // The client libraries (kube, hyper, tonic) log every refused connection while the control
    // plane starts; the wait reports what matters, so their logs show only from -vvv.
    let libraries = if cli.global.verbose >= 3 {
        LevelFilter::DEBUG
    } else {
        LevelFilter::OFF
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(LevelFilter::DEBUG)
        .with_target(false)
        .finish()
        .with(
            Targets::new()
                .with_default(libraries)
                .with_target("kubeforge", level),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let bad_input = e.chain().any(|c| {
                c.downcast_ref::<config::ConfigError>().is_some()
                    || c.downcast_ref::<BadInput>().is_some()
            });
            ExitCode::from(if bad_input { 2 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let out = Output {
        format: cli.global.output,
    };
    let global = &cli.global;
    match cli.command {
        Command::Init(args) => match args.phase {
            None => {
                let mut ctx = context(global, &args.flags, out)?;
                let skip = ctx.cfg.init.skip_phases.clone();
                pki::prefetch_keys(&ctx.cfg, &ctx.layout, &skip);
                phases::run_all(&mut ctx, phases::INIT, &skip)?;
                finish_dry_run(&ctx);
                Ok(())
            }
            Some(InitSubcommand::Phase { name, sub, flags }) => {
                let phase = phases::find(phases::INIT, &name).expect("clap checked the name");
                let subs: Vec<String> = (phase.subphases)().into_iter().map(|(n, _)| n).collect();
                if let Some(s) = &sub {
                    if s != "all" && !subs.contains(s) {
                        bail!(BadInput(format!(
                            "unknown sub-phase {s:?} of phase {name}; valid: all, {}",
                            subs.join(", ")
                        )));
                    }
                }
                let mut ctx = context(global, &flags, out)?;
                let skip = ctx.cfg.init.skip_phases.clone();
                let sel = phases::Selection {
                    phase: phase.name,
                    only: sub.as_deref(),
                    skip: &skip,
                };
                (phase.run)(&mut ctx, &sel)?;
                // Run alone, upload-certs is how an operator gets a fresh key: show it.
                if let (Some(key), false) = (&ctx.certificate_key, ctx.out.json()) {
                    println!("[upload-certs] Using certificate key:\n{key}");
                } else if let Some(key) = &ctx.certificate_key {
                    ctx.out
                        .print_json(&serde_json::json!({ "certificateKey": key }));
                }
                finish_dry_run(&ctx);
                Ok(())
            }
        },
        Command::Join(args) => {
            let (flags, only) = match args.phase {
                None => (args.flags, None),
                Some(JoinSubcommand::Phase { name, flags }) => (flags, Some(name)),
            };
            let (cfg, joining) = join::prepare(&flags, &global.kubernetes_dir)?;
            phases::check_skip(phases::JOIN, &cfg.init.skip_phases)?;
            let mut ctx = context_for(global, cfg, None, out)?;
            ctx.joining = Some(joining);
            let skip = ctx.cfg.init.skip_phases.clone();
            match only {
                None => {
                    phases::run_all(&mut ctx, phases::JOIN, &skip)?;
                    phases::joined(&ctx);
                }
                Some(name) => {
                    let phase = phases::find(phases::JOIN, &name).expect("clap checked the name");
                    let sel = phases::Selection {
                        phase: phase.name,
                        only: None,
                        skip: &skip,
                    };
                    (phase.run)(&mut ctx, &sel)?;
                }
            }
            finish_dry_run(&ctx);
            Ok(())
        }
        Command::Config(ConfigCommand::Print(PrintCommand::InitDefaults)) => {
            print!("{}", config::print_init_defaults());
            Ok(())
        }
        Command::Config(ConfigCommand::Validate { config: path }) => {
            config::load(
                Some(&path),
                &config::Overrides::default(),
                &global.kubernetes_dir,
            )?;
            println!("ok");
            Ok(())
        }
        Command::Config(ConfigCommand::Images(ImagesCommand::List { flags })) => {
            let cfg = config::load(
                flags.config.as_deref(),
                &overrides(&flags),
                &global.kubernetes_dir,
            )?;
            let images = render::images(&cfg);
            if out.json() {
                out.print_json(&serde_json::json!({ "images": images }));
            } else {
                images.iter().for_each(|i| println!("{i}"));
            }
            Ok(())
        }
        Command::Certs(CertsCommand::CheckExpiration { config, cert_dir }) => {
            let overrides = config::Overrides {
                cert_dir,
                ..Default::default()
            };
            let cfg = config::load(config.as_deref(), &overrides, &global.kubernetes_dir)?;
            pki::expiration::report(&cfg, &global.kubernetes_dir, out)
        }
        Command::Token(command) => {
            let admin = |access: cli::ClusterAccess| {
                access
                    .kubeconfig
                    .unwrap_or_else(|| global.kubernetes_dir.join("admin.conf"))
            };
            match command {
                TokenCommand::Create { token, access } => {
                    cluster::tokens::create(&token, &admin(access), &global.kubernetes_dir, out)
                }
                TokenCommand::List { access } => cluster::tokens::list(&admin(access), out),
                TokenCommand::Delete { ids, access } => {
                    cluster::tokens::delete(&ids, &admin(access), out)
                }
                TokenCommand::Generate => {
                    println!("{}", cluster::token::Token::generate());
                    Ok(())
                }
            }
        }
        Command::Reset {
            force,
            dry_run,
            cert_dir,
        } => {
            let pki = cert_dir.unwrap_or_else(|| global.kubernetes_dir.join("pki"));
            let layout = host::Layout::new(
                &global.kubernetes_dir,
                &global.kubelet_dir,
                &pki,
                Path::new("/var/lib/etcd"),
            );
            phases::reset::run(&layout, out, force, dry_run)
        }
        Command::Certs(CertsCommand::CertificateKey) => {
            println!("{}", hex::encode(rand::random::<[u8; 32]>()));
            Ok(())
        }
        Command::Version => {
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

fn overrides(flags: &InitFlags) -> config::Overrides {
    config::Overrides {
        kubernetes_version: flags.kubernetes_version.clone(),
        advertise_address: flags.apiserver_advertise_address.clone(),
        bind_port: flags.apiserver_bind_port,
        control_plane_endpoint: flags.control_plane_endpoint.clone(),
        pod_network_cidr: flags.pod_network_cidr.clone(),
        service_cidr: flags.service_cidr.clone(),
        service_dns_domain: flags.service_dns_domain.clone(),
        node_name: flags.node_name.clone(),
        cert_dir: flags.cert_dir.clone(),
        image_repository: flags.image_repository.clone(),
        upload_certs: flags.upload_certs,
        certificate_key: flags.certificate_key.clone(),
        token: flags.token.clone(),
        token_ttl: flags.token_ttl.clone(),
        skip_phases: flags.skip_phases.clone(),
        ignore_preflight_errors: flags.ignore_preflight_errors.clone(),
        dry_run: flags.dry_run,
        patches: flags.patches.clone(),
    }
}

/// Loads and validates the config (nothing is written before this succeeds), then lays out the
/// node and takes the lock.
fn context(global: &cli::Global, flags: &InitFlags, out: Output) -> Result<phases::Context> {
    let cfg = config::load(
        flags.config.as_deref(),
        &overrides(flags),
        &global.kubernetes_dir,
    )?;
    phases::check_skip(phases::INIT, &cfg.init.skip_phases)?;
    let mut cfg = cfg;
    cfg.init.dry_run |= flags.dry_run;
    context_for(global, cfg, flags.templates.clone(), out)
}

/// The node laid out for a validated config, its patches checked, the writer opened.
fn context_for(
    global: &cli::Global,
    cfg: config::Config,
    templates: Option<std::path::PathBuf>,
    out: Output,
) -> Result<phases::Context> {
    let etcd_data_dir = cfg
        .cluster
        .etcd
        .local
        .as_ref()
        .map(|l| l.data_dir.clone())
        .unwrap_or_else(|| "/var/lib/etcd".into());
    let layout = host::Layout::new(
        &global.kubernetes_dir,
        &global.kubelet_dir,
        Path::new(&cfg.cluster.certificates_dir),
        Path::new(&etcd_data_dir),
    );
    if let Some(dir) = cfg
        .init
        .patches
        .as_ref()
        .filter(|p| !p.directory.is_empty())
    {
        // Every patch file is read, and every manifest patched, before anything is written.
        for target in render::patches::TARGETS {
            render::patches::load(Path::new(&dir.directory), target)?;
        }
        for component in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            render::render(&cfg, &layout, component, templates.as_deref())?;
        }
    }
    let dry_run = cfg.init.dry_run;
    let writer = host::HostWriter::open(&layout, dry_run).context("preparing the node")?;
    if let Some(dir) = writer.dry_run_dir() {
        out.step(
            "dryrun",
            &format!(
                "Writing files into {:?} instead of the node",
                dir.display().to_string()
            ),
            serde_json::json!({ "dryRunDir": dir }),
        );
    }
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond");
    Ok(phases::Context {
        cfg,
        layout,
        writer,
        out,
        now,
        templates,
        tokens: Vec::new(),
        certificate_key: None,
        api: None,
        joining: None,
    })
}

fn finish_dry_run(ctx: &phases::Context) {
    if let Some(dir) = ctx.writer.dry_run_dir() {
        ctx.out.step(
            "dryrun",
            &format!(
                "Finished dry-running successfully; the files are in {:?}, the node is untouched",
                dir.display().to_string()
            ),
            serde_json::json!({ "dryRunDir": dir, "finished": true }),
        );
    }
}
