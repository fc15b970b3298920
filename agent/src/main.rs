//! mtls-auditor: wires the command line to the pipeline modules.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::{CommandFactory as _, FromArgMatches as _};
use std::io::Write as _;

use anyhow::{Context as _, anyhow, bail};
use mtls_auditor::{
    cli::{ClassifyArgs, Cli, Command, EdgesArgs, LogFormat, PolicyCommand},
    pcap,
    policy::{self, Query, Severity, model::Direction, watch},
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

fn classify_pcap(args: &ClassifyArgs) -> anyhow::Result<()> {
    let pcap::Classified { records, report } = pcap::classify_file(&args.pcap, args.budget)?;
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
    drop(out);
    // What was left out, after what was read: on stderr, so `--json` stays clean.
    let path = args.pcap.display();
    for m in report.messages(records.len()) {
        eprintln!("mtls-auditor: {path}: {m}");
    }
    if args.strict && (report.stop.is_some() || report.unreadable() > 0) {
        bail!(
            "{path}: --strict: the capture was not read completely ({} unreadable packet(s){})",
            report.unreadable(),
            if report.stop.is_some() {
                ", the file ended early"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Largest edges answer read (about 300 bytes an edge: a million edges).
const MAX_EDGES_ANSWER: u64 = 512 * 1024 * 1024;

/// GETs the edges from the agent within `--timeout` for everything (connecting,
/// the answer, its body), so a listener that never answers or drips a byte at a
/// time cannot hold the command. A busy agent (503 or 429: too many edges requests
/// at once) is asked again until the deadline.
fn fetch_edges(url: &str, args: &EdgesArgs) -> anyhow::Result<String> {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + args.timeout;
    let timeout = humantime::format_duration(args.timeout);
    let what = |e: ureq::Error| -> anyhow::Error {
        let timed_out = matches!(e, ureq::Error::Timeout(_))
            || matches!(&e, ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut);
        if timed_out {
            anyhow!(
                "no complete answer from the agent at {} within {timeout} (--timeout): is `mtls-auditor run` listening there?",
                args.agent
            )
        } else {
            anyhow!(
                "asking the agent at {} (is `mtls-auditor run` listening there?): {e}",
                args.agent
            )
        }
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(what(ureq::Error::Timeout(ureq::Timeout::Global)));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(left))
            .timeout_connect(Some(left.min(Duration::from_secs(5))))
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent.get(url).call().map_err(what)?;
        let status = response.status();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_EDGES_ANSWER)
            .read_to_string()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => anyhow!(
                    "the agent at {} answered more than {MAX_EDGES_ANSWER} bytes",
                    args.agent
                ),
                e => what(e).context("reading the agent's answer"),
            })?;
        if status.is_success() {
            return Ok(body);
        }
        let busy = status.as_u16() == 503 || status.as_u16() == 429;
        let pause = Duration::from_millis(200);
        if !busy || deadline.saturating_duration_since(Instant::now()) <= pause {
            bail!(
                "the agent at {} answered {status}: {}",
                args.agent,
                mtls_auditor::text::escape(body.trim())
            );
        }
        std::thread::sleep(pause);
    }
}

fn edges(args: &EdgesArgs) -> anyhow::Result<()> {
    let mut url = format!("http://{}/api/v1/edges", args.agent);
    let mut query = Vec::new();
    if let Some(ns) = &args.namespace {
        query.push(format!("namespace={ns}"));
    }
    if let Some(v) = &args.verdict {
        query.push(format!("verdict={v}"));
    }
    if !query.is_empty() {
        url = format!("{url}?{}", query.join("&"));
    }
    let body = fetch_edges(&url, args)?;
    let edges: Vec<mtls_auditor::export::edges::Edge> =
        serde_json::from_str(&body).context("the agent's answer is not a list of edges")?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &edges)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", mtls_auditor::export::edges::render_table(&edges))?;
    }
    Ok(())
}

fn policy_check(paths: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let (files, diags) = policy::load(paths);
    let mut out = std::io::stdout().lock();
    for d in &diags {
        writeln!(out, "{d}")?;
    }
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diags.len() - errors;
    let mut more = String::new();
    if !files.service_entries.is_empty() {
        more.push_str(&format!(", {} ServiceEntry", files.service_entries.len()));
    }
    if !files.mesh_configs.is_empty() {
        more.push_str(&format!(", {} mesh config", files.mesh_configs.len()));
    }
    for (n, kind) in [
        (files.servers.len(), "Server"),
        (files.authorization_policies.len(), "AuthorizationPolicy"),
        (files.meshtls_authentications.len(), "MeshTLSAuthentication"),
        (files.network_authentications.len(), "NetworkAuthentication"),
        (files.namespaces.len(), "Namespace"),
        (files.linkerd_configs.len(), "Linkerd config"),
    ] {
        if n > 0 {
            more.push_str(&format!(", {n} {kind}"));
        }
    }
    writeln!(
        out,
        "{} PeerAuthentication, {} DestinationRule, {} TransportPolicy, {} Inventory{more}; {errors} error(s), {warnings} warning(s)",
        files.peer_authentications.len(),
        files.destination_rules.len(),
        files.transport_policies.len(),
        files.inventories.len()
    )?;
    if files.is_empty() && errors == 0 {
        writeln!(out, "no policy objects found: nothing was checked")?;
    }
    if errors > 0 {
        bail!("policy check failed: {errors} error(s)");
    }
    Ok(())
}

/// `host:port`, with IPv6 hosts in brackets.
fn split_port(s: &str) -> anyhow::Result<(&str, u16)> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("--to `{s}`: expected HOST:PORT"))?;
    let port = port
        .parse::<u16>()
        .with_context(|| format!("--to `{s}`: `{port}` is not a port"))?;
    Ok((host.trim_start_matches('[').trim_end_matches(']'), port))
}

fn policy_explain(
    paths: &[std::path::PathBuf],
    from: &str,
    to: &str,
    root_namespace: &str,
) -> anyhow::Result<()> {
    let set = watch::load_set(paths, root_namespace, None).map_err(|errs| {
        anyhow!(
            "{}",
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let inv = &set.inventory;
    type Found = (
        Option<mtls_auditor::inventory::Workload>,
        Option<std::net::IpAddr>,
    );
    let lookup = |s: &str| -> anyhow::Result<Found> {
        if let Ok(ip) = s.parse::<std::net::IpAddr>() {
            return Ok((inv.workload_by_addr(ip), Some(ip)));
        }
        if let Some((ns, name)) = s.split_once('/') {
            let w = inv.workload_by_name(ns, name).ok_or_else(|| {
                anyhow!("`{s}`: no workload {name} in namespace {ns} in the inventory")
            })?;
            let addr = inv.workload_address(&w);
            return Ok((Some(w), addr));
        }
        Ok((None, None))
    };
    let (source, source_addr) = lookup(from)?;
    if source.is_none() && source_addr.is_none() {
        bail!("--from `{from}`: expected namespace/workload from the inventory or an IP address");
    }
    let (host, port) = split_port(to)?;
    let (mut destination, mut dest_addr) = lookup(host)?;
    let mut services = Vec::new();
    if destination.is_none() && dest_addr.is_none() {
        let svc = inv
            .service_by_host(host, source.as_ref().map_or("default", |w| w.namespace.as_str()))
            .ok_or_else(|| anyhow!("--to `{to}`: `{host}` is not an address, a namespace/workload or a known service"))?;
        dest_addr = inv.service_address(&svc);
        services.push(svc);
        destination = dest_addr.and_then(|a| inv.workload_by_addr(a));
    }
    let dest_ip = dest_addr.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    if services.is_empty() {
        services = inv.services_for(dest_ip, port);
    }
    let q = Query {
        source: source.clone(),
        destination: destination.clone(),
        source_addr: source_addr.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
        destination_addr: dest_ip,
        port,
        services: services.clone(),
        client_process: None,
        server_process: None,
        direction: Direction::Local,
        client_has_proxy: None,
    };
    let e = set.expect(&q);
    // Names come from files and the cluster: escape control characters.
    let p = |s: &str| policy::printable(s).into_owned();
    let name = |w: Option<&mtls_auditor::inventory::Workload>, fallback: &str| {
        w.map_or_else(
            || p(fallback),
            |w| format!("{}/{}", p(&w.namespace), p(&w.name)),
        )
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "connection: {} -> {}{}:{port}",
        name(source.as_ref(), from),
        name(destination.as_ref(), host),
        services
            .first()
            .map(|s| format!(" ({})", p(&s.fqdn)))
            .unwrap_or_default()
    )?;
    if let Some(ex) = &e.exempt {
        writeln!(out, "exempt:     {}", p(ex))?;
    }
    if e.deny.is_some() {
        writeln!(
            out,
            "refused:    yes (the policy admits no such client: a served connection is a violation{})",
            if e.deny_http {
                "; HTTP gets a 403 on an accepted connection, which the capture cannot tell from a served one"
            } else {
                ""
            }
        )?;
    }
    writeln!(
        out,
        "expected:   {}",
        mtls_auditor::verdict::requirement_str(e.expected)
    )?;
    writeln!(out, "decided by: {}", p(&e.reason))?;
    writeln!(
        out,
        "permissive: {}",
        if e.permissive {
            "yes (the server accepts plaintext)"
        } else {
            "no"
        }
    )?;
    if let Some(why) = &e.auto_mtls {
        if why.starts_with("Linkerd") {
            writeln!(
                out,
                "client:     Linkerd: the client's proxy speaks mutual TLS to the destination's (plaintext here would mean it was bypassed)"
            )?;
        } else {
            writeln!(
                out,
                "client:     auto-mTLS: the client's sidecar sends ISTIO_MUTUAL (plaintext here would mean it was bypassed)"
            )?;
        }
    }
    if !e.policies.is_empty() {
        writeln!(out, "policies:")?;
        for x in &e.policies {
            writeln!(out, "  - {}", p(x))?;
        }
    }
    Ok(())
}

/// The serde name of a unit enum value.
fn label<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The command line, with `run --config FILE`'s settings added where neither the
/// command line nor the environment set them, and what to warn about once logging
/// is set up. A refused value names the flag and where it came from.
fn parse_command_line() -> anyhow::Result<(Cli, Vec<String>)> {
    let mut cmd = Cli::command();
    cmd.build();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = match cmd.clone().try_get_matches_from(&argv) {
        Ok(m) => m,
        Err(e) => match mtls_auditor::config::describe_value_error(&cmd, &e, &argv) {
            Some(msg) => bail!(msg),
            None => e.exit(),
        },
    };
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let Command::Run(args) = &cli.command else {
        return Ok((cli, Vec::new()));
    };
    let (Some(file), Some(run), Some(run_matches)) = (
        &args.config,
        cmd.find_subcommand("run"),
        matches.subcommand_matches("run"),
    ) else {
        return Ok((cli, Vec::new()));
    };
    let extra = mtls_auditor::config::arguments(run, run_matches, file)?;
    let argv: Vec<_> = argv.into_iter().chain(extra.args).collect();
    let cli = Cli::from_arg_matches(&cmd.try_get_matches_from(argv)?)?;
    Ok((cli, extra.warnings))
}

fn main() -> ExitCode {
    let (cli, warnings) = match parse_command_line() {
        Ok(parsed) => parsed,
        Err(err) => {
            eprintln!("mtls-auditor: {err}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(&cli.log.log_level, cli.log.log_format);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let result: anyhow::Result<()> = match &cli.command {
        Command::Run(args) => run::run(args).map_err(Into::into),
        Command::Classify(args) => classify_pcap(args),
        Command::Policy(PolicyCommand::Check { paths }) => policy_check(paths),
        Command::Policy(PolicyCommand::Explain {
            paths,
            from,
            to,
            root_namespace,
        }) => policy_explain(paths, from, to, root_namespace),
        Command::Edges(args) => edges(args),
        Command::Report(args) => mtls_auditor::report::run(args).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line that names what is wrong: the error and those of its causes
            // its message does not already include.
            let mut msg = err.to_string();
            for cause in err.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("mtls-auditor: {msg}");
            ExitCode::FAILURE
        }
    }
}
