//! The `report` subcommand: the window, the modes, the queries, the report, the
//! output.

use std::{
    io::Write as _,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use thiserror::Error;
use tracing::{info, warn};

use super::{
    build, cluster, html,
    model::{self, Answers, PrometheusInfo, Report, Window},
    modes::{self, Modes},
    prom::{PromError, Prometheus, Sample},
    queries::{self, Scope, duration},
    render,
};
use crate::{
    cli::{ReportArgs, ReportFormat},
    kube::ClusterState,
    policy::watch,
};

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("--since {0}: the window is empty")]
    EmptySince(String),
    #[error("--until {until} is in the future")]
    Future { until: String },
    #[error(transparent)]
    Prometheus(#[from] PromError),
    #[error(
        "Prometheus at {url} holds no mtls-auditor series between {start} and {end}: is it scraping the agents, and does the window (--since, --until) cover when they ran?"
    )]
    NoData {
        url: String,
        start: String,
        end: String,
    },
    #[error("{0}")]
    Policy(String),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error("writing the report to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Step of the first/last-seen subqueries and of the coverage gaps: about a
/// thousand steps per window, never under a minute (a usual scrape interval).
pub fn step_for(window: u64) -> u64 {
    window.div_ceil(1000).max(60)
}

/// What each presence point looks back over: the step, and at least Prometheus'
/// five-minute staleness (so a slow scrape interval is not a gap).
pub fn presence_window(step: u64) -> u64 {
    step.max(300)
}

/// Interval of the per-namespace chart: about 200 points per window.
pub fn chart_step(window: u64, step: u64) -> u64 {
    window.div_ceil(200).max(step)
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs() as f64)
}

/// Loads the modes: policy files and the cluster's objects, or inference.
fn modes(args: &ReportArgs) -> Result<Modes, ReportError> {
    let view = cluster::fetch(
        args.kubeconfig.as_deref(),
        args.namespace.as_deref(),
        args.timeout,
    )?;
    if args.policy.is_empty() && view.is_none() {
        return Ok(Modes::Inferred);
    }
    let state = view.as_ref().map(|v| {
        let mut st = ClusterState::new("report");
        st.set_peer_authentications(v.peer_authentications.clone());
        Arc::new(RwLock::new(st))
    });
    let set =
        watch::load_set(&args.policy, &args.root_namespace, state.as_ref()).map_err(|errs| {
            ReportError::Policy(
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
    let mut from = Vec::new();
    if !args.policy.is_empty() {
        from.push(format!(
            "policy files {}",
            args.policy
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut labels = modes::Labels::new();
    if let Some(v) = view {
        for u in &v.unreadable {
            warn!("skipping an object this version cannot read: {u}");
        }
        from.push(match v.peer_authentication_version {
            Some(ver) => format!(
                "the cluster ({:?}): {} PeerAuthentication(s) ({ver}), labels of {} pod(s)",
                v.source,
                v.peer_authentications.len(),
                v.pods
            ),
            None => format!(
                "the cluster ({:?}): PeerAuthentication is not served (Istio not installed?), labels of {} pod(s)",
                v.source, v.pods
            ),
        });
        labels = v.labels;
    }
    Ok(Modes::Policy {
        set: Box::new(set),
        labels,
        from: from.join("; "),
    })
}

/// Asks Prometheus everything the report needs.
pub fn collect(
    prom: &mut Prometheus,
    scope: &Scope,
    window: &Window,
) -> Result<Answers, ReportError> {
    let w = duration(window.seconds);
    let step = window.step_seconds;
    let s = duration(step);
    let end = window.end_unix;
    let any = prom.instant(&queries::any_series(&w), end, "mtls-auditor series")?;
    if any.iter().all(|x| x.value <= 0.0) {
        return Err(ReportError::NoData {
            url: prom.url().to_owned(),
            start: window.start.clone(),
            end: window.end.clone(),
        });
    }
    let counts = prom.instant(&queries::counts(scope, &w), end, "connections")?;
    let first_step = window.steps().first().copied().unwrap_or(end);
    let changed = prom.range(
        &queries::changed(scope, &s),
        first_step,
        end,
        Duration::from_secs(step),
        "first and last seen",
    )?;
    let at = |pick: fn(f64, f64) -> f64| -> Vec<Sample> {
        changed
            .iter()
            .filter_map(|c| {
                let t = c.points.iter().map(|p| p.0).reduce(pick)?;
                Some(Sample {
                    labels: c.labels.clone(),
                    value: t,
                })
            })
            .collect()
    };
    let (first_seen, last_seen) = (at(f64::min), at(f64::max));
    let pw = presence_window(step);
    let presence = prom.range(
        &queries::presence(&duration(pw)),
        first_step,
        end,
        Duration::from_secs(step),
        "agent presence",
    )?;
    let up = prom.instant(&queries::up_share(&w), end, "scrape targets")?;
    let c = chart_step(window.seconds, step);
    let cs = duration(c);
    let chart_start = window.start_unix + c as f64;
    let (namespace_all, namespace_mutual_tls) = if chart_start <= end {
        (
            prom.range(
                &queries::namespace_connections(scope, false, &cs),
                chart_start,
                end,
                Duration::from_secs(c),
                "connections per namespace",
            )?,
            prom.range(
                &queries::namespace_connections(scope, true, &cs),
                chart_start,
                end,
                Duration::from_secs(c),
                "mutual TLS per namespace",
            )?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(Answers {
        counts,
        first_seen,
        last_seen,
        presence,
        presence_window: pw,
        up,
        namespace_all,
        namespace_mutual_tls,
    })
}

/// The window from `--since` and `--until`.
pub fn window(since: Duration, until: Option<SystemTime>) -> Result<Window, ReportError> {
    let seconds = since.as_secs();
    if seconds == 0 {
        return Err(ReportError::EmptySince(
            humantime::format_duration(since).to_string(),
        ));
    }
    let now = SystemTime::now();
    let end = until.unwrap_or(now);
    if end > now + Duration::from_secs(60) {
        return Err(ReportError::Future {
            until: humantime::format_rfc3339_seconds(end).to_string(),
        });
    }
    let end_unix = unix(end).floor();
    let start_unix = end_unix - seconds as f64;
    Ok(Window {
        start: model::rfc3339(start_unix),
        end: model::rfc3339(end_unix),
        seconds,
        step_seconds: step_for(seconds),
        start_unix,
        end_unix,
    })
}

/// Builds the report the arguments ask for.
pub fn report(args: &ReportArgs) -> Result<Report, ReportError> {
    let window = window(args.since, args.until)?;
    let mut prom = Prometheus::new(&args.prometheus, args.timeout)?;
    // A bad policy file or an unreachable API server fails before the queries.
    let modes = modes(args)?;
    prom.check(window.end_unix)?;
    let version = prom.version();
    let scope = Scope::namespace(args.namespace.as_deref());
    info!(prometheus = prom.url(), start = %window.start, end = %window.end, "querying");
    let answers = collect(&mut prom, &scope, &window)?;
    let mut report = build::build(
        &answers,
        window,
        PrometheusInfo {
            url: prom.url().to_owned(),
            version,
        },
        args.namespace.clone(),
        &modes,
        model::Names {
            overflow: crate::export::metrics::OVERFLOW,
            build_info: &queries::build_info_metric(),
        },
    );
    for w in prom.warnings.drain(..) {
        report
            .coverage
            .notes
            .push(format!("Prometheus warned: {w}"));
    }
    Ok(report)
}

/// `mtls-auditor report`.
pub fn run(args: &ReportArgs) -> Result<(), ReportError> {
    let report = report(args)?;
    let text = match args.format {
        ReportFormat::Table => render::table(&report),
        ReportFormat::Markdown => render::markdown(&report),
        ReportFormat::Json => {
            let mut s = serde_json::to_string_pretty(&report)?;
            s.push('\n');
            s
        }
        ReportFormat::Html => html::page(&report),
    };
    match &args.output {
        Some(path) => std::fs::write(path, text).map_err(|source| ReportError::Write {
            path: path.clone(),
            source,
        }),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|source| ReportError::Write {
                    path: PathBuf::from("stdout"),
                    source,
                })
        }
    }
}
