use std::process::ExitCode;

use clap::Parser;

use mta_stsd::cli::{Cli, run};

fn main() -> ExitCode {
    // reqwest is built without a default TLS provider; every client uses ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mta-stsd: {e:#}");
            ExitCode::from(2)
        }
    }
}
