//! mtls-auditor: wires the command line to the pipeline modules.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use mtls_auditor::{
    cli::{Cli, Command, LogFormat},
    run,
};
use tracing_subscriber::EnvFilter;

fn init_logging(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log.log_level, cli.log.log_format);
    let result: anyhow::Result<()> = match &cli.command {
        Command::Run(args) => run::run(args).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line that names what is wrong.
            eprintln!("mtls-auditor: {err:#}");
            ExitCode::FAILURE
        }
    }
}
