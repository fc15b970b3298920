//! mtls-auditor: wires the command line to the pipeline modules.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use std::io::Write as _;

use mtls_auditor::{
    cli::{ClassifyArgs, Cli, Command, LogFormat},
    pcap, run,
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

fn classify_pcap(args: &ClassifyArgs) -> anyhow::Result<()> {
    let records = pcap::classify_file(&args.pcap, args.budget)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        for r in &records {
            serde_json::to_writer(&mut out, r)?;
            writeln!(out)?;
        }
    } else {
        writeln!(
            out,
            "{:<44} {:<10} {:<6} {:<8} {:<15} EVIDENCE",
            "CONNECTION", "CLASS", "CONF", "PROTOCOL", "OUTCOME"
        )?;
        for r in &records {
            let c = &r.classification;
            let conn = format!(
                "{} -> {}",
                r.source_ip
                    .zip(r.source_port)
                    .map_or("?".into(), |(a, p)| std::net::SocketAddr::new(a, p)
                        .to_string()),
                r.destination_ip
                    .zip(r.destination_port)
                    .map_or("?".into(), |(a, p)| std::net::SocketAddr::new(a, p)
                        .to_string())
            );
            writeln!(
                out,
                "{conn:<44} {:<10} {:<6} {:<8} {:<15} {}",
                c.connection_security_policy.as_str(),
                label(&c.confidence),
                label(&c.protocol),
                label(&c.outcome),
                c.evidence
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The serde name of a unit enum value.
fn label<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log.log_level, cli.log.log_format);
    let result: anyhow::Result<()> = match &cli.command {
        Command::Run(args) => run::run(args).map_err(Into::into),
        Command::Classify(args) => classify_pcap(args),
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
