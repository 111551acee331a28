use clap::Parser;
use std::process::ExitCode;

use kubeforge::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(cli.global.verbose);
    match cli::dispatch::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(kubeforge::exit_code(&e))
        }
    }
}
