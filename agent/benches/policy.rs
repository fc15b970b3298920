//! Policy resolution per connection with a large policy: 10,000
//! PeerAuthentications (namespace-wide and workload ones over 500 namespaces)
//! and 10,000 DestinationRules (exact hosts, and wildcards), judged for a mix of
//! connections between workloads with sidecars. Measures the indexed
//! `PolicySet::expect` and, in the same run, the unindexed resolution (every
//! object scanned per connection, as before the index), and prints connections
//! per second of CPU (thread CPU time: the build machines are shared) of both
//! and their ratio. The agent must keep up with 20,000 new
//! connections per second. Run with `cargo bench -p mtls-auditor --bench policy`.

use std::{
    collections::BTreeMap,
    hint::black_box,
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use mtls_auditor::{
    inventory::{Service, Workload},
    policy::{
        Located, PolicySet, Query,
        destination::resolve_host,
        load::load_str,
        model::{DestinationRule, Direction, PeerAuthentication, PeerMode, TlsMode},
        order::AgeKey,
    },
};

const NAMESPACES: usize = 500;
const PEER: usize = 10_000;
const RULES: usize = 10_000;

fn policy_yaml() -> String {
    let mut y = String::new();
    y.push_str("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n");
    for i in 0..PEER {
        let ns = i % NAMESPACES;
        if i < NAMESPACES {
            y.push_str(&format!("---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: ns-{ns}}}\nspec:\n  mtls: {{mode: {}}}\n", if ns.is_multiple_of(3) { "PERMISSIVE" } else { "STRICT" }));
        } else {
            y.push_str(&format!("---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: app-{i}, namespace: ns-{ns}}}\nspec:\n  selector: {{matchLabels: {{app: app-{i}}}}}\n  mtls: {{mode: STRICT}}\n  portLevelMtls:\n    9090: {{mode: PERMISSIVE}}\n"));
        }
    }
    for i in 0..RULES {
        let ns = i % NAMESPACES;
        let host = if i % 50 == 0 {
            format!("*.ns-{ns}.svc.cluster.local")
        } else {
            format!("svc-{i}")
        };
        y.push_str(&format!("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: dr-{i}, namespace: ns-{ns}}}\nspec:\n  host: \"{host}\"\n  trafficPolicy:\n    tls: {{mode: ISTIO_MUTUAL}}\n    portLevelSettings:\n    - port: {{number: 8443}}\n      tls: {{mode: SIMPLE}}\n"));
    }
    y
}

fn workload(ns: usize, app: usize) -> Workload {
    Workload {
        name: format!("app-{app}"),
        namespace: format!("ns-{ns}"),
        labels: [
            ("app".to_owned(), format!("app-{app}")),
            ("version".to_owned(), "v1".to_owned()),
        ]
        .into(),
        pod: None,
        canonical_service: None,
        container: None,
        port_names: BTreeMap::new(),
        sidecar: true,
        linkerd: None,
        service_account: None,
    }
}

/// Connections between workloads of the policy: to services with and without a
/// DestinationRule, on plain, port-level and selected ports.
fn queries() -> Vec<Query<'static>> {
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    (0..4096)
        .map(|k| {
            let app = NAMESPACES + (k * 31) % (PEER - NAMESPACES);
            let ns = app % NAMESPACES;
            let i = ns + NAMESPACES * (k % (RULES / NAMESPACES));
            let dst = workload(ns, app);
            let src = workload((ns + 1) % NAMESPACES, k % PEER);
            // Every fourth service has no rule of its own (wildcard or none).
            let name = if k % 4 == 0 {
                format!("other-{k}")
            } else {
                format!("svc-{i}")
            };
            let svc = Service {
                fqdn: format!("{name}.ns-{ns}.svc.cluster.local"),
                name,
                namespace: format!("ns-{ns}"),
                headless: false,
                mesh_external: false,
            };
            Query {
                source: Some(src),
                destination: Some(dst),
                source_addr: ip("10.1.0.1"),
                destination_addr: ip("10.2.0.1"),
                port: [8080, 8443, 9090][k % 3],
                services: vec![svc],
                client_process: None,
                server_process: None,
                direction: Direction::Local,
                client_has_proxy: None,
            }
        })
        .collect()
}

/// The resolution without an index: every object looked at per connection.
struct Unindexed<'a> {
    pas: &'a [Located<PeerAuthentication>],
    drs: &'a [Located<DestinationRule>],
    root: &'a str,
}

impl Unindexed<'_> {
    fn oldest<'b>(
        items: impl Iterator<Item = (usize, &'b Located<PeerAuthentication>)>,
    ) -> Option<&'b Located<PeerAuthentication>> {
        items
            .min_by_key(|(i, l)| AgeKey::new(&l.object.metadata, *i))
            .map(|(_, l)| l)
    }

    fn peer(&self, ns: &str, labels: &BTreeMap<String, String>, port: u16) -> PeerMode {
        let all = || self.pas.iter().enumerate();
        let mesh =
            Self::oldest(all().filter(|(_, p)| {
                p.object.metadata.ns() == self.root && !p.object.spec.has_selector()
            }));
        let nsw = Self::oldest(all().filter(|(_, p)| {
            p.object.metadata.ns() == ns && ns != self.root && !p.object.spec.has_selector()
        }));
        let wl = Self::oldest(all().filter(|(_, p)| {
            p.object.metadata.ns() == ns
                && ns != self.root
                && p.object.spec.has_selector()
                && p.object
                    .spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| s.matches(labels))
        }));
        let mut mode = PeerMode::Permissive;
        for p in [mesh, nsw, wl].into_iter().flatten() {
            if p.object.spec.mode() != PeerMode::Unset {
                mode = p.object.spec.mode();
            }
        }
        if let Some(p) = wl
            && let Some(m) = p
                .object
                .spec
                .port_level_mtls
                .as_ref()
                .and_then(|m| m.get(&port))
            && m.mode() != PeerMode::Unset
        {
            mode = m.mode();
        }
        mode
    }

    fn client(&self, client_ns: &str, svc: &Service, port: u16) -> Option<TlsMode> {
        for ns in [client_ns, svc.namespace.as_str(), self.root] {
            let best = self
                .drs
                .iter()
                .enumerate()
                .filter(|(_, d)| d.object.metadata.ns() == ns)
                .filter_map(|(i, d)| {
                    let h = resolve_host(&d.object.spec.host, ns, "cluster.local");
                    let spec = if h == svc.fqdn {
                        usize::MAX
                    } else {
                        let tail = h.strip_prefix('*')?;
                        if !svc.fqdn.ends_with(tail) {
                            return None;
                        }
                        tail.len()
                    };
                    Some((
                        spec,
                        std::cmp::Reverse(AgeKey::new(&d.object.metadata, i)),
                        d,
                    ))
                })
                .max_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            if let Some((_, _, d)) = best {
                let tp = d.object.spec.traffic_policy.as_ref()?;
                return tp.for_port(port).0.map(|t| t.mode());
            }
        }
        None
    }

    fn expect(&self, q: &Query<'_>) -> (PeerMode, Option<TlsMode>) {
        let dst = q.destination.as_ref().expect("destination");
        let src = q.source.as_ref().expect("source");
        (
            self.peer(&dst.namespace, &dst.labels, q.port),
            self.client(&src.namespace, &q.services[0], q.port),
        )
    }
}

/// CPU time of this thread: the machine is shared, and wall time would count
/// the time other processes had the core.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Connections per second of CPU over `qs`, repeated for about `budget` of CPU.
fn rate(budget: Duration, qs: &[Query<'_>], mut f: impl FnMut(&Query<'_>)) -> f64 {
    let start = thread_cpu();
    let mut n = 0u64;
    while thread_cpu() - start < budget {
        for q in qs {
            f(q);
        }
        n += qs.len() as u64;
    }
    n as f64 / (thread_cpu() - start).as_secs_f64()
}

fn bench(c: &mut Criterion) {
    let load = Instant::now();
    let (files, diags) = load_str(Path::new("bench.yaml"), &policy_yaml());
    assert!(
        !diags
            .iter()
            .any(|d| d.severity == mtls_auditor::policy::Severity::Error),
        "{:?}",
        diags.first()
    );
    let set = PolicySet::new(files, "istio-system");
    let load = load.elapsed();
    let qs = queries();
    let slow = Unindexed {
        pas: &set.files.peer_authentications,
        drs: &set.files.destination_rules,
        root: "istio-system",
    };
    // Both resolutions agree on the server mode and the client's DestinationRule mode.
    for q in &qs {
        let dst = q.destination.as_ref().expect("destination");
        let (mode, _) = slow.expect(q);
        assert_eq!(
            set.peer_mode(&dst.namespace, &dst.labels, q.port).mode,
            mode
        );
    }
    let mut group =
        c.benchmark_group("policy per connection (10k PeerAuthentication + 10k DestinationRule)");
    group.bench_function("indexed (PolicySet::expect)", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % qs.len();
            black_box(set.expect(black_box(&qs[i])))
        })
    });
    group.sample_size(10);
    group.bench_function("unindexed (scan every object)", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % qs.len();
            black_box(slow.expect(black_box(&qs[i])))
        })
    });
    group.finish();
    let fast = rate(Duration::from_secs(2), &qs, |q| {
        black_box(set.expect(q));
    });
    let scan = rate(Duration::from_secs(2), &qs[..64], |q| {
        black_box(slow.expect(q));
    });
    println!(
        "policy: loaded and indexed {} objects in {:.2} s (wall); per second of CPU: indexed {:.0} connections/s, unindexed {:.0} connections/s, ratio {:.0}x; target 20000 connections/s: {}",
        PEER + 1 + RULES,
        load.as_secs_f64(),
        fast,
        scan,
        fast / scan,
        if fast >= 20_000.0 { "met" } else { "NOT met" }
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
