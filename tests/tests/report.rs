//! Issue 16: `mtls-auditor report` over a week of four nodes' counters with known
//! truth (integration_tests::report), loaded with `promtool tsdb
//! create-blocks-from openmetrics` and served by a real Prometheus: the report's
//! numbers, readiness, refused clients, violations and coverage gaps must match the
//! truth (within Prometheus' extrapolation), the dashboard's queries must agree
//! with the report, and the HTML page must render its tables and charts in
//! headless Chromium.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Read as _,
    path::{Path, PathBuf},
    time::Duration,
};

use integration_tests::{
    Cgroup, Record, Spawn, TempDir,
    report::{
        DAY, Def, SCRAPE, SYNTH_PROM, WINDOW, World, approx, clients, n, query, report_ok, rfc3339,
        s, server, synthetic, unix_of, value,
    },
};

const POLICY: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: pay-strict
  namespace: pay
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: shop-permissive
  namespace: shop
spec:
  mtls:
    mode: PERMISSIVE
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: reports-disable
  namespace: legacy
spec:
  selector:
    matchLabels:
      app: reports
  mtls:
    mode: DISABLE
---
apiVersion: mtls-auditor.io/v1alpha1
kind: Inventory
metadata:
  name: labels
spec:
  workloads:
  - name: reports
    namespace: legacy
    labels:
      app: reports
    match: {}
";

/// Prometheus on `listen`, over the TSDB in `dir/tsdb`, scraping `scrape` if given.
fn check_server(world: &World, r: &Record, ns: &str, workload: &str, port: &str, mode: &str) {
    let name = format!("{ns}/{workload}:{port}");
    let srv = server(r, &name);
    let mine: Vec<&Def> = world
        .counted()
        .into_iter()
        .filter(|d| {
            d.reporter == "destination" && d.destination == (ns, workload) && d.port == port
        })
        .collect();
    let total: f64 = mine.iter().map(|d| world.truth(d)).sum();
    let mtls: f64 = mine
        .iter()
        .filter(|d| d.observed == "mutual_tls")
        .map(|d| world.truth(d))
        .sum();
    assert!(
        approx(n(srv, "connections"), total),
        "{name}: {srv:#} vs {total}"
    );
    assert!(
        approx(n(srv, "mutual_tls_connections"), mtls),
        "{name}: {srv:#} vs {mtls}"
    );
    assert_eq!(s(srv, "mode"), mode, "{name}: {srv:#}");
    let by_client = |pick: &dyn Fn(&Def) -> bool| {
        let mut m: BTreeMap<String, (f64, f64, i64)> = BTreeMap::new();
        for d in mine.iter().filter(|d| pick(d) && world.truth(d) > 0.0) {
            let e = m
                .entry(format!("{}/{}", d.source.0, d.source.1))
                .or_default();
            if d.observed == "tls" {
                e.1 += world.truth(d);
            } else {
                e.0 += world.truth(d);
            }
            e.2 = e.2.max(world.last(d).unwrap_or(0));
        }
        m
    };
    let weak = by_client(&|d| {
        matches!(d.observed, "none" | "tls")
            && !matches!(d.verdict, "rejected" | "exempt" | "unknown")
    });
    let refused = by_client(&|d| d.verdict == "rejected");
    assert_eq!(
        srv["ready_for_strict"].as_bool(),
        Some(weak.is_empty()),
        "{name}: {srv:#}"
    );
    let step = r["window"]["step_seconds"].as_i64().expect("step");
    for (field, want) in [("plaintext_clients", &weak), ("refused_clients", &refused)] {
        let got = clients(&srv[field]);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{name} {field}: {srv:#}"
        );
        for (c, (none, tls, last)) in want {
            let g = &got[c];
            assert!(
                approx(n(g, "plaintext_connections"), *none),
                "{name} {c}: {g} vs {none}"
            );
            assert!(
                approx(n(g, "one_way_tls_connections"), *tls),
                "{name} {c}: {g} vs {tls}"
            );
            // Last seen: the step after the last connection, to within one step.
            let seen = unix_of(&s(g, "last_seen"));
            assert!(
                seen >= *last - SCRAPE && seen <= *last + step + SCRAPE,
                "{name} {c}: last seen {} for a last connection at {}",
                s(g, "last_seen"),
                rfc3339(*last)
            );
        }
    }
}

/// The synthetic cluster's Prometheus, with its data loaded.
fn write_policy(dir: &Path) -> PathBuf {
    let p = dir.join("policy.yaml");
    std::fs::write(&p, POLICY).expect("policy");
    p
}

#[test]
fn a_week_of_four_nodes_reads_as_the_truth() {
    let dir = TempDir::new();
    let (world, _prom) = synthetic(dir.path());
    let policy = write_policy(dir.path());
    let url = format!("http://{SYNTH_PROM}");
    let until = rfc3339(world.end);
    let args = [
        "--prometheus",
        &url,
        "--since",
        "7d",
        "--until",
        &until,
        "--policy",
        policy.to_str().expect("utf8"),
    ];
    let json = report_ok(&[&args[..], &["--format", "json"]].concat());
    eprintln!("{json}");
    let r: Record = serde_json::from_str(&json).expect("report JSON");
    assert_eq!(r["schema"], "mtls-auditor.report/v1");
    assert_eq!(r["window"]["end"], until.as_str());
    assert_eq!(r["window"]["seconds"], WINDOW);

    // Every server the counters show, and only those.
    let names: BTreeSet<String> = r["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|x| format!("{}/{}:{}", s(x, "namespace"), s(x, "workload"), x["port"]))
        .collect();
    let want: BTreeSet<String> = [
        "pay/checkout:8443",
        "shop/frontend:8080",
        "shop/catalog:9090",
        "shop/search:9200",
        "pay/ledger:5432",
        "legacy/reports:8080",
        "shop/cart:7070",
        "unknown/unknown:7000",
    ]
    .iter()
    .map(|x| (*x).to_owned())
    .collect();
    assert_eq!(names, want);
    for (ns, w, port, mode) in [
        ("pay", "checkout", "8443", "STRICT"),
        ("shop", "frontend", "8080", "PERMISSIVE"),
        ("shop", "catalog", "9090", "PERMISSIVE"),
        ("shop", "search", "9200", "PERMISSIVE"),
        ("pay", "ledger", "5432", "STRICT"),
        ("legacy", "reports", "8080", "DISABLE"),
        ("shop", "cart", "7070", "PERMISSIVE"),
        ("unknown", "unknown", "7000", "PERMISSIVE"),
    ] {
        check_server(&world, &r, ns, w, port, mode);
    }
    // The facts the truth was built around, spelt out.
    assert_eq!(server(&r, "pay/checkout:8443")["ready_for_strict"], true);
    assert_eq!(server(&r, "shop/catalog:9090")["ready_for_strict"], true);
    let search = server(&r, "shop/search:9200");
    assert_eq!(
        search["ready_for_strict"], false,
        "one plaintext connection in a week"
    );
    assert_eq!(search["plaintext_clients"][0]["connections"], 1);
    let frontend = clients(&server(&r, "shop/frontend:8080")["plaintext_clients"]);
    assert!(
        !frontend.contains_key("legacy/old"),
        "traffic before the window counted"
    );
    assert!(frontend["pay/checkout"]["one_way_tls_connections"].as_u64() > Some(0));
    let refused = clients(&server(&r, "pay/checkout:8443")["refused_clients"]);
    assert_eq!(
        refused.keys().collect::<Vec<_>>(),
        ["legacy/batch", "shop/cron"]
    );
    assert!(
        s(server(&r, "pay/checkout:8443"), "mode_source")
            .contains("PeerAuthentication pay/pay-strict"),
        "{}",
        server(&r, "pay/checkout:8443")
    );

    // Violations: at the server, and at the client for a destination no agent saw.
    let violations: BTreeMap<String, Record> = r["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .map(|v| {
            (
                format!(
                    "{} -> {}:{}",
                    s(v, "source"),
                    s(v, "destination"),
                    v["port"]
                ),
                v.clone(),
            )
        })
        .collect();
    assert_eq!(
        violations.keys().collect::<Vec<_>>(),
        [
            "legacy/batch -> pay/ledger:5432",
            "shop/web -> unknown/unknown:80"
        ]
    );
    for d in world.counted().iter().filter(|d| d.verdict == "violation") {
        let v = &violations[&format!(
            "{}/{} -> {}/{}:{}",
            d.source.0, d.source.1, d.destination.0, d.destination.1, d.port
        )];
        assert!(
            approx(n(v, "connections"), world.truth(d)),
            "{v} vs {}",
            world.truth(d)
        );
        assert_eq!(s(v, "reporter"), d.reporter);
        assert!(unix_of(&s(v, "first_seen")) <= unix_of(&s(v, "last_seen")));
    }

    // Coverage: node-2's restart, node-3 gone halfway, node-4 never up.
    let cov = &r["coverage"];
    assert_eq!(cov["agents_reporting"], 3);
    assert_eq!(cov["agents_with_gaps"], 2, "{cov:#}");
    let agents: BTreeMap<String, Record> = cov["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .map(|a| (s(a, "instance"), a.clone()))
        .collect();
    assert!(
        agents["node-1:9477"]["gaps"]
            .as_array()
            .expect("gaps")
            .is_empty(),
        "{cov:#}"
    );
    let (down_from, down_to) = world.nodes[1].down.expect("node-2 restarts");
    let gaps = agents["node-2:9477"]["gaps"].as_array().expect("gaps");
    assert_eq!(gaps.len(), 1, "{cov:#}");
    assert!(
        unix_of(&s(&gaps[0], "from")) < down_to && unix_of(&s(&gaps[0], "to")) > down_from,
        "node-2's gap {} does not cover its restart at {}",
        gaps[0],
        rfc3339(down_from)
    );
    assert_eq!(agents["node-2:9477"]["stopped_reporting"], false);
    let node3 = &agents["node-3:9477"];
    assert_eq!(node3["stopped_reporting"], true, "{node3}");
    let stop = world.nodes[2].stop.expect("node-3 stops");
    let gap = node3["gaps"]
        .as_array()
        .and_then(|g| g.last())
        .expect("gap");
    assert!(
        (unix_of(&s(gap, "from")) - stop).abs()
            <= 2 * r["window"]["step_seconds"].as_i64().expect("step"),
        "{gap} vs {}",
        rfc3339(stop)
    );
    assert!((n(node3, "reported_share") - 0.5).abs() < 0.02, "{node3}");
    assert_eq!(
        cov["targets_never_up"][0]["instance"], "node-4:9477",
        "{cov:#}"
    );
    for name in ["shop/cart:7070", "legacy/reports:8080"] {
        let c = server(&r, name)["caveats"].to_string();
        assert!(
            c.contains("agent node-3:9477 stopped reporting"),
            "{name}: {c}"
        );
    }
    let unknown: f64 = world
        .counted()
        .iter()
        .filter(|d| d.observed == "unknown")
        .map(|d| world.truth(d))
        .sum();
    let total: f64 = world.counted().iter().map(|d| world.truth(d)).sum();
    assert!(approx(n(cov, "unknown_connections"), unknown), "{cov:#}");
    assert!(approx(n(cov, "connections"), total), "{cov:#} vs {total}");
    assert!(cov["incomplete_share"].is_null());
    assert!(
        server(&r, "pay/checkout:8443")["caveats"]
            .to_string()
            .contains("unknown class")
    );
    // Per namespace: a share over time, from the start of the window to its end.
    for ns in r["namespaces"].as_array().expect("namespaces") {
        let pts = ns["share_over_time"].as_array().expect("points");
        assert!(pts.len() >= 20, "{}: {} points", ns["namespace"], pts.len());
    }

    // The dashboard runs the same queries: its tables agree with the report.
    let dash: Record = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/strict-readiness.json"),
        )
        .expect("dashboard"),
    )
    .expect("JSON");
    let panel = |title: &str| -> String {
        dash["panels"]
            .as_array()
            .expect("panels")
            .iter()
            .find(|p| p["title"] == title)
            .and_then(|p| p["targets"][0]["expr"].as_str())
            .unwrap_or_else(|| panic!("no panel {title}"))
            .replace("$__range", &format!("{WINDOW}s"))
            .replace("$__rate_interval", "1h")
            .replace("$namespace", ".*")
    };
    let rows = query(
        SYNTH_PROM,
        &panel("Clients sending plaintext or one-way TLS, by server"),
        world.end,
    );
    let mut from_dash: BTreeMap<String, f64> = BTreeMap::new();
    for row in &rows {
        let m = &row["metric"];
        *from_dash
            .entry(format!(
                "{}/{}:{} <- {}/{}",
                s(m, "destination_workload_namespace"),
                s(m, "destination_workload"),
                s(m, "destination_port"),
                s(m, "source_workload_namespace"),
                s(m, "source_workload")
            ))
            .or_default() += value(row);
    }
    let mut from_report: BTreeMap<String, f64> = BTreeMap::new();
    for srv in r["servers"].as_array().expect("servers") {
        for c in srv["plaintext_clients"].as_array().expect("clients") {
            from_report.insert(
                format!(
                    "{}/{}:{} <- {}/{}",
                    s(srv, "namespace"),
                    s(srv, "workload"),
                    srv["port"],
                    s(c, "namespace"),
                    s(c, "workload")
                ),
                n(c, "connections"),
            );
        }
    }
    assert_eq!(
        from_dash.keys().collect::<Vec<_>>(),
        from_report.keys().collect::<Vec<_>>()
    );
    for (k, v) in &from_dash {
        assert!(
            approx(*v, from_report[k]),
            "{k}: dashboard {v}, report {}",
            from_report[k]
        );
    }
    let not_ready = query(
        SYNTH_PROM,
        &panel("Servers not ready for STRICT"),
        world.end,
    );
    assert_eq!(
        not_ready.first().map(value),
        Some(
            r["servers"]
                .as_array()
                .expect("servers")
                .iter()
                .filter(|x| x["ready_for_strict"] == false)
                .count() as f64
        )
    );
    let v = query(SYNTH_PROM, &panel("Violations"), world.end);
    assert_eq!(v.len(), 2, "{v:?}");
    let up = query(
        SYNTH_PROM,
        &panel("Scrape targets of the agents' jobs: share of scrapes up"),
        world.end,
    );
    assert_eq!(up.len(), 4, "{up:?}");
    for title in [
        "Mutual-TLS share by namespace",
        "Accepted plaintext and one-way TLS, by server",
        "Agents reporting over time",
        "Mutual-TLS share by server",
    ] {
        assert!(
            !query(SYNTH_PROM, &panel(title), world.end - DAY).is_empty(),
            "{title}"
        );
    }

    // Without policy the modes are inferred from the verdicts, and said so.
    let bare = report_ok(&["--prometheus", &url, "--until", &until, "--format", "json"]);
    let b: Record = serde_json::from_str(&bare).expect("JSON");
    assert_eq!(s(server(&b, "pay/checkout:8443"), "mode"), "STRICT");
    assert_eq!(s(server(&b, "shop/frontend:8080"), "mode"), "PERMISSIVE");
    assert_eq!(s(server(&b, "shop/catalog:9090"), "mode"), "UNKNOWN");
    assert!(s(&b, "modes_from").contains("inferred"));

    // One namespace: its servers, and its connections to destinations no agent saw.
    let shop = report_ok(&[
        "--prometheus",
        &url,
        "--until",
        &until,
        "--format",
        "json",
        "--namespace",
        "shop",
    ]);
    let shop: Record = serde_json::from_str(&shop).expect("JSON");
    assert!(
        shop["servers"]
            .as_array()
            .expect("servers")
            .iter()
            .all(|x| x["namespace"] == "shop")
    );
    assert_eq!(shop["servers"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        shop["violations"].as_array().map(Vec::len),
        Some(1),
        "{:#}",
        shop["violations"]
    );

    // The table for people: print it for the record.
    let table = report_ok(&[&args[..], &["--format", "table"]].concat());
    eprintln!("{table}");
    assert!(
        table.contains("Servers: 8 seen, 3 ready for STRICT, 5 not"),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.starts_with("shop/search:9200")
            && l.contains("PERMISSIVE")
            && l.contains("no")),
        "{table}"
    );
    let md = report_ok(&[&args[..], &["--format", "markdown"]].concat());
    assert!(
        md.starts_with("# STRICT readiness\n") && md.contains("| SERVER | MODE | READY |"),
        "{md}"
    );

    // The HTML page, rendered by a real browser.
    let html = dir.path().join("report.html");
    report_ok(
        &[
            &args[..],
            &["--format", "html", "--output", html.to_str().expect("utf8")],
        ]
        .concat(),
    );
    let page = std::fs::read_to_string(&html).expect("html");
    for outside in ["<script", "src=", "href=", "url(", "@import", "<link"] {
        assert!(
            !page.contains(outside),
            "the page refers to something outside itself: {outside}"
        );
    }
    let namespaces = r["namespaces"].as_array().map_or(0, Vec::len);
    assert_eq!(page.matches("<svg class=\"chart\"").count(), namespaces);
    screenshot_check(dir.path(), &html, &r);
}

/// Renders the page in headless Chromium and checks the screenshot: one chart line
/// per namespace, a badge per server (red for not ready, green for ready), table
/// headers.
fn screenshot_check(dir: &Path, html: &Path, r: &Record) {
    let png = dir.join("report.png");
    let profile = dir.join("chromium-profile");
    std::fs::create_dir_all(&profile).expect("profile dir");
    let cg = Cgroup::new("report-chromium");
    let out = Spawn::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .cgroup(&cg)
        .run(Duration::from_secs(120));
    // Chromium's helpers are ours too: none may outlive the screenshot.
    let _ = std::fs::write(cg.path().join("cgroup.kill"), "1");
    assert!(
        out.status.success() && png.exists(),
        "chromium (Debian's `chromium`, installed by ./x setup) made no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png).expect("png"),
    ));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    let channels = info.color_type.samples();
    let (w, h) = (info.width as usize, info.height as usize);
    let rgb = |hex: &str| -> [u8; 3] {
        let v = u32::from_str_radix(hex.trim_start_matches('#'), 16).expect("hex");
        [(v >> 16) as u8, (v >> 8) as u8, v as u8]
    };
    // Rows of the image that hold pixels of `colour`, grouped into runs.
    let runs = |colour: [u8; 3], min_pixels: usize| -> usize {
        let mut runs = 0;
        let mut inside = false;
        for y in 0..h {
            let row = &buf[y * w * channels..(y + 1) * w * channels];
            let hits = row
                .chunks(channels)
                .filter(|p| p[..3].iter().zip(colour).all(|(a, b)| a.abs_diff(b) <= 12))
                .count();
            let hit = hits >= min_pixels;
            if hit && !inside {
                runs += 1;
            }
            inside = hit;
        }
        runs
    };
    let servers = r["servers"].as_array().expect("servers");
    let not_ready = servers
        .iter()
        .filter(|x| x["ready_for_strict"] == false)
        .count();
    let ready = servers.len() - not_ready;
    let charts = r["namespaces"].as_array().map_or(0, Vec::len);
    // A chart line crosses many rows; charts are separated by tables.
    let lines = runs(rgb("#1565c0"), 2);
    assert!(
        lines >= charts,
        "{lines} chart line bands for {charts} charts ({})",
        png.display()
    );
    let red = runs(rgb("#c62828"), 20);
    let green = runs(rgb("#2e7d32"), 20);
    assert_eq!(
        red,
        not_ready,
        "not-ready badges rendered ({})",
        png.display()
    );
    assert_eq!(green, ready, "ready badges rendered ({})", png.display());
    assert!(
        runs(rgb("#37474f"), 100) >= charts + 3,
        "table headers ({})",
        png.display()
    );
    // For a look by eye: MTLS_AUDITOR_TEST_ARTIFACTS=DIR keeps the page and the shot.
    if let Some(keep) = std::env::var_os("MTLS_AUDITOR_TEST_ARTIFACTS") {
        let keep = PathBuf::from(keep);
        let _ = std::fs::create_dir_all(&keep);
        let _ = std::fs::copy(html, keep.join("report.html"));
        let _ = std::fs::copy(&png, keep.join("report.png"));
    }
    let mut head = [0u8; 8];
    std::fs::File::open(&png)
        .expect("png")
        .read_exact(&mut head)
        .expect("read");
    assert_eq!(&head[1..4], b"PNG");
}
