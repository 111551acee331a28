//! kubeforge: a Kubernetes control-plane bootstrapper compatible with kubeadm v1.35.
//!
//! Three layers, each importing only the ones below it (docs/architecture.md):
//! - `cli`: clap types and dispatch; maps flags to the workflows' options.
//! - `workflow`: the runner (phases as data) and one table per command.
//! - domain modules, one noun each: `config`, `pki`, `kubeconfig`, `certs`, `manifests`,
//!   `kubelet`, `kube`, `cluster`, `etcd`, `health`, `preflight`, `rootless`, over `node` (every
//!   host path and the one writer) and `output`.

pub mod certs;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod cri;
pub mod encryption;
pub mod endpoint;
pub mod etcd;
pub mod fuzzing;
pub mod health;
pub mod images;
pub mod kube;
pub mod kubeconfig;
pub mod kubelet;
pub mod launcher;
pub mod manifests;
pub mod node;
pub mod output;
pub mod pki;
pub mod preflight;
pub mod rootless;
pub mod upgrade;
pub mod versions;
pub mod workflow;

use std::future::Future;
use std::sync::OnceLock;

/// The process's one async runtime (single-threaded: kubeforge's network steps are few and
/// sequential; key generation, the only heavy work, runs on its own threads).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the tokio runtime starts")
    })
}

/// Runs `future` to completion on the process's runtime. Not reentrant: async code awaits.
pub fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

/// Bad input from the operator — a flag, a file, a name — as opposed to a failure at run time.
/// It is found before anything is written; `kubeforge` exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

impl From<config::ConfigError> for BadInput {
    fn from(e: config::ConfigError) -> BadInput {
        BadInput(e.to_string())
    }
}

/// The exit code for an error: 2 for bad input (a config error or [`BadInput`], even under
/// added context), 1 for anything else.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    let bad_input = error.downcast_ref::<BadInput>().is_some()
        || error.downcast_ref::<config::ConfigError>().is_some();
    if bad_input {
        2
    } else {
        1
    }
}
