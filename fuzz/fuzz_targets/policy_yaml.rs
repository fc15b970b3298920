//! Policy files: arbitrary text through the multi-document loader, validation and
//! lookups (server side, DestinationRule index, Linkerd's inbound policy for a
//! meshed workload). Every problem must be a
//! diagnostic, never a panic. Seeded with the repository's policy examples.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mtls_auditor::{
    inventory::{LinkerdProxy, Workload},
    policy::{PolicyFiles, PolicySet, load::load_text},
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut files = PolicyFiles::default();
    let mut diags = Vec::new();
    load_text(Path::new("fuzz.yaml"), text, &mut files, &mut diags);
    for d in &diags {
        let _ = d.to_string();
    }
    let set = PolicySet::new(files, "istio-system");
    let _ = set.peer_mode("default", &Default::default(), 8080);
    let _ = set.namespace_mode("default");
    let _ = set.destination_rules_for("default", "reviews.default.svc.cluster.local", "default");
    let _ = set.destination_rules_for("istio-system", "*.example.com", "default");
    let web = Workload {
        name: "web".into(),
        namespace: "default".into(),
        labels: [("app".to_owned(), "web".to_owned())].into(),
        port_names: [(8080, "http".to_owned())].into(),
        linkerd: Some(LinkerdProxy::default()),
        service_account: Some("web".into()),
        ..Workload::default()
    };
    for addr in ["10.0.0.1", "127.0.0.1", "fd00::1", "203.0.113.1"] {
        let addr = addr.parse().ok();
        let _ = set.linkerd_decision(&web, 8080, Some(&web), addr);
        let _ = set.linkerd_decision(&web, 9090, None, addr);
    }
});
