//! What `mtls-auditor report` reads from the network: a Prometheus API answer,
//! decoded, made into a report (as counts, first and last seen and scrape health
//! when it is a vector; as agent presence and the namespace charts when it is a
//! matrix) and rendered in every format. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtls_auditor::report::{
    answer, build, html,
    model::{self, Answers, Names, PrometheusInfo, Window},
    modes::Modes,
    render,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(a) = answer::decode(text) else {
        return;
    };
    let mut answers = Answers {
        presence_window: 300,
        ..Answers::default()
    };
    match a.result {
        Some(answer::Result::Vector(v)) => {
            answers.counts = v.clone();
            answers.first_seen = v.clone();
            answers.last_seen = v.clone();
            answers.up = v;
        }
        Some(answer::Result::Matrix(m)) => {
            answers.presence = m.clone();
            answers.namespace_all = m.clone();
            answers.namespace_mutual_tls = m;
        }
        _ => return,
    }
    let (start, end) = (1_764_000_000.0, 1_764_003_600.0);
    let window = Window {
        start: model::rfc3339(start),
        end: model::rfc3339(end),
        seconds: 3600,
        step_seconds: 60,
        start_unix: start,
        end_unix: end,
    };
    let report = build::build(
        &answers,
        window,
        PrometheusInfo {
            url: "http://fuzz".into(),
            version: None,
        },
        None,
        &Modes::Inferred,
        Names {
            overflow: "~other",
            build_info: "mtls_auditor_build_info",
        },
    );
    let _ = render::table(&report);
    let _ = render::markdown(&report);
    let _ = html::page(&report);
    let _ = serde_json::to_string(&report);
});
