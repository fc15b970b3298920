//! Issue 3: the scenario matrix through the live agent and through a capture of the
//! same traffic, checked against the expected class and against independent
//! oracles (tshark for SNI, ALPN and version; Suricata for JA4).
//!
//! `MTLS_WRITE_ACCURACY=docs/accuracy.md` (what `cargo xtask accuracy` sets) also
//! writes the table.

use std::{collections::HashMap, path::PathBuf, process::Stdio, time::Duration};

use integration_tests::{
    Agent, AgentOptions, Record, Spawn, agent_bin, require_root,
    scenarios::{self, Ctx, Row},
};

fn str_of(v: &Record, key: &str) -> String {
    v.get(key).and_then(|x| x.as_str()).unwrap_or("").to_owned()
}

/// (class, outcome, protocol, mesh) of a record, as strings.
fn summary(r: &Record) -> (String, String, String, String) {
    (
        str_of(r, "connection_security_policy"),
        str_of(r, "outcome"),
        str_of(r, "protocol"),
        str_of(r, "mesh"),
    )
}

fn matches(r: &Record, e: &scenarios::Expect) -> bool {
    let (class, outcome, protocol, mesh) = summary(r);
    class == e.class
        && e.outcome.is_none_or(|o| o == outcome)
        && protocol == e.protocol
        && e.mesh.is_none_or(|m| m == mesh)
        && e.resumed
            .is_none_or(|want| r["tls"]["resumed"].as_bool() == Some(want))
        && e.confidence
            .is_none_or(|want| str_of(r, "confidence") == want)
}

fn short(r: Option<&Record>) -> String {
    match r {
        Some(r) => {
            let (class, outcome, _, _) = summary(r);
            format!("{class} ({outcome}, {})", str_of(r, "confidence"))
        }
        None => "missing".into(),
    }
}

/// tshark's view of each TLS connection, keyed by client port: (SNI, ALPN list,
/// negotiated version).
fn tshark_view(cap: &str, ports: &[u16]) -> HashMap<u16, (String, String, String)> {
    let mut decode = Vec::new();
    for p in ports {
        decode.push("-d".to_owned());
        decode.push(format!("tcp.port=={p},tls"));
    }
    let run = |filter: &str, fields: &[&str]| -> String {
        let mut s = Spawn::new("tshark").args([
            "-r",
            cap,
            "-Y",
            filter,
            "-T",
            "fields",
            "-E",
            "separator=|",
        ]);
        for d in &decode {
            s = s.arg(d);
        }
        for f in fields {
            s = s.arg("-e").arg(f);
        }
        s.run_ok(Duration::from_secs(60))
    };
    let mut out: HashMap<u16, (String, String, String)> = HashMap::new();
    let hellos = run(
        "tls.handshake.type==1",
        &[
            "tcp.srcport",
            "tls.handshake.extensions_server_name",
            "tls.handshake.extensions_alpn_str",
        ],
    );
    for line in hellos.lines() {
        let f: Vec<&str> = line.split('|').collect();
        if let Ok(port) = f[0].parse::<u16>() {
            // The first ClientHello of a connection (a second one follows a HelloRetryRequest).
            out.entry(port).or_insert((
                f[1].to_owned(),
                f.get(2).copied().unwrap_or("").to_owned(),
                String::new(),
            ));
        }
    }
    let servers = run(
        "tls.handshake.type==2",
        &[
            "tcp.dstport",
            "tls.handshake.extensions.supported_version",
            "tls.handshake.version",
        ],
    );
    for line in servers.lines() {
        let f: Vec<&str> = line.split('|').collect();
        let Ok(port) = f[0].parse::<u16>() else {
            continue;
        };
        let v = if !f[1].is_empty() {
            f[1]
        } else {
            f.get(2).copied().unwrap_or("")
        };
        let version = match v {
            "0x0304" => "1.3",
            "0x0303" => "1.2",
            other => other,
        };
        if let Some(e) = out.get_mut(&port) {
            e.2 = version.to_owned();
        }
    }
    out
}

/// Every object below `v` (depth first, in order) that has `key`.
fn objects_with<'a>(v: &'a Record, key: &str, out: &mut Vec<&'a Record>) {
    match v {
        serde_json::Value::Object(m) => {
            if m.contains_key(key) {
                out.push(v);
            }
            for x in m.values() {
                objects_with(x, key, out);
            }
        }
        serde_json::Value::Array(a) => {
            for x in a {
                objects_with(x, key, out);
            }
        }
        _ => {}
    }
}

/// The TLS records each client sent, keyed by client port, as tshark dissects
/// them: `CH 517` (ClientHello), `CCS`, `hs 7` (a cleartext handshake record),
/// `app 61` (TLS 1.2 application data), `alert 26`, and the length alone for TLS 1.3
/// encrypted records (the client's flight, then its application data). The first
/// eight records of each connection.
fn tshark_client_records(cap: &str, ports: &[u16]) -> HashMap<u16, Vec<String>> {
    let mut s = Spawn::new("tshark").args([
        "-r",
        cap,
        "-Y",
        "tls.record",
        "-T",
        "json",
        "--no-duplicate-keys",
        "-J",
        "tcp tls",
    ]);
    for p in ports {
        s = s.arg("-d").arg(format!("tcp.port=={p},tls"));
    }
    let out = s.run_ok(Duration::from_secs(120));
    let packets: Vec<Record> =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("tshark -T json: {e}"));
    let field = |v: &Record, k: &str| -> String {
        match &v[k] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join("+"),
            _ => String::new(),
        }
    };
    let mut map: HashMap<u16, Vec<String>> = HashMap::new();
    for pkt in &packets {
        let layers = &pkt["_source"]["layers"];
        let dst: u16 = field(&layers["tcp"], "tcp.dstport").parse().unwrap_or(0);
        let src: u16 = field(&layers["tcp"], "tcp.srcport").parse().unwrap_or(0);
        if !ports.contains(&dst) {
            continue;
        }
        let mut records = Vec::new();
        objects_with(&layers["tls"], "tls.record.length", &mut records);
        let list = map.entry(src).or_default();
        for r in records {
            if list.len() >= 8 {
                break;
            }
            let len = field(r, "tls.record.length");
            let mut types = Vec::new();
            objects_with(r, "tls.handshake.type", &mut types);
            let hs: Vec<String> = types
                .iter()
                .map(|t| field(t, "tls.handshake.type"))
                .collect();
            list.push(match field(r, "tls.record.content_type").as_str() {
                "20" => "CCS".to_owned(),
                "21" => format!("alert {len}"),
                "22" if hs.iter().any(|t| t == "1") => format!("CH {len}"),
                "22" => format!("hs {len}"),
                "23" => format!("app {len}"),
                _ => len,
            });
        }
    }
    map
}

/// Suricata's JA4 of each TLS connection, keyed by client port.
fn suricata_ja4(cap: &str, dir: &std::path::Path) -> HashMap<u16, String> {
    let conf = dir.join("suricata.yaml");
    std::fs::write(
        &conf,
        "%YAML 1.1\n---\noutputs:\n  - eve-log:\n      enabled: yes\n      filetype: regular\n      filename: eve.json\n      \
         types:\n        - tls:\n            extended: yes\n            custom: [sni, version, ja4]\napp-layer:\n  \
         protocols:\n    tls:\n      enabled: yes\n      ja4-fingerprints: yes\n",
    )
    .expect("suricata.yaml");
    let logs = dir.join("suricata");
    std::fs::create_dir_all(&logs).expect("suricata dir");
    Spawn::new("suricata")
        .args([
            "-c",
            conf.to_str().expect("utf8"),
            "-r",
            cap,
            "-l",
            logs.to_str().expect("utf8"),
            "-k",
            "none",
        ])
        .run_ok(Duration::from_secs(120));
    let eve = std::fs::read_to_string(logs.join("eve.json")).unwrap_or_default();
    let mut out = HashMap::new();
    for line in eve.lines() {
        let Ok(v) = serde_json::from_str::<Record>(line) else {
            continue;
        };
        if v["event_type"] != "tls" {
            continue;
        }
        if let (Some(port), Some(ja4)) = (v["src_port"].as_u64(), v["tls"]["ja4"].as_str()) {
            out.insert(port as u16, ja4.to_owned());
        }
    }
    out
}

#[test]
fn classifier_matrix() {
    require_root();
    let ctx = Ctx::new(PathBuf::from(env!("CARGO_BIN_EXE_rustls-client")));
    let cap = ctx.dir.path().join("matrix.pcapng");
    let cap_s = cap.to_str().expect("utf8").to_owned();
    let iface = format!("mtlsa{}a", ctx.pair.net);
    let mut dumpcap = Spawn::new("dumpcap")
        .args([
            "-q",
            "-i",
            &iface,
            "-f",
            "tcp portrange 20001-20099",
            "-w",
            &cap_s,
        ])
        .netns(&ctx.pair.a)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    assert!(
        integration_tests::wait_for(Duration::from_secs(10), || cap.exists().then_some(()))
            .is_some(),
        "dumpcap did not start"
    );
    std::thread::sleep(Duration::from_millis(500));

    let agent = Agent::start(AgentOptions::default());
    let matrix = scenarios::matrix();
    for sc in &matrix {
        (sc.run)(&ctx, sc.port);
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(2500));
    dumpcap.signal(libc::SIGINT);
    assert!(
        dumpcap.wait_timeout(Duration::from_secs(10)).is_some(),
        "dumpcap did not stop"
    );
    let exit = agent.stop();

    let pcap_out = Spawn::new(agent_bin().to_str().expect("utf8"))
        .args(["classify", "--pcap", &cap_s, "--json"])
        .run_ok(Duration::from_secs(60));
    let pcap_records: Vec<Record> = pcap_out
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("classify --json wrote {l}: {e}"))
        })
        .collect();

    let tls_ports: Vec<u16> = matrix.iter().filter(|s| s.tls).map(|s| s.port).collect();
    let records = tshark_client_records(&cap_s, &tls_ports);
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for sc in &matrix {
        let mut live: Vec<&Record> = exit
            .records
            .iter()
            .filter(|r| {
                r["server"]["port"].as_u64() == Some(u64::from(sc.port))
                    && str_of(&r["server"], "addr") == ctx.server_ip()
            })
            .collect();
        live.sort_by_key(|r| str_of(r, "start"));
        let mut offline: Vec<&Record> = pcap_records
            .iter()
            .filter(|r| r["destination_port"].as_u64() == Some(u64::from(sc.port)))
            .collect();
        offline.sort_by_key(|r| str_of(r, "start"));
        for (i, exp) in sc.expect.iter().enumerate() {
            let a = live.get(i).copied();
            let b = offline.get(i).copied();
            let ok = a.is_some_and(|r| matches(r, exp)) && b.is_some_and(|r| matches(r, exp));
            if !ok {
                failures.push(format!(
                    "{} #{i}: expected {} ({:?}, {}, confidence {:?}), agent {:?}, pcap {:?}",
                    sc.name,
                    exp.class,
                    exp.outcome,
                    exp.protocol,
                    exp.confidence,
                    a.map(|r| r.to_string()),
                    b.map(|r| r.to_string())
                ));
            }
            let name = if sc.expect.len() > 1 {
                format!("{} #{}", sc.name, i + 1)
            } else {
                sc.name.to_owned()
            };
            let client_port = b.and_then(|r| r["source_port"].as_u64()).unwrap_or(0) as u16;
            let mut wants: Vec<&str> = exp.outcome.into_iter().collect();
            wants.extend(exp.confidence);
            rows.push(Row {
                scenario: name,
                what: sc.what.to_owned(),
                expected: if wants.is_empty() {
                    exp.class.to_owned()
                } else {
                    format!("{} ({})", exp.class, wants.join(", "))
                },
                agent: short(a),
                pcap: short(b),
                client_records: records
                    .get(&client_port)
                    .map(|r| r.join(", "))
                    .unwrap_or_default(),
                evidence: a.map(|r| str_of(r, "evidence")).unwrap_or_default(),
                ok,
            });
        }
        if live.len() != sc.expect.len() {
            failures.push(format!(
                "{}: {} live agent records for {} expected: {live:?}",
                sc.name,
                live.len(),
                sc.expect.len()
            ));
        }
    }

    // Oracles on the same capture.
    let tshark = tshark_view(&cap_s, &tls_ports);
    let ja4 = suricata_ja4(&cap_s, ctx.dir.path());
    let mut checked = (0, 0, 0);
    let mut oracle_failures = Vec::new();
    for r in &pcap_records {
        let port = r["destination_port"].as_u64().unwrap_or(0) as u16;
        if !tls_ports.contains(&port) || r["tls"].is_null() {
            continue;
        }
        let client_port = r["source_port"].as_u64().unwrap_or(0) as u16;
        let tls = &r["tls"];
        let ours_sni = str_of(tls, "sni");
        let ours_alpn: Vec<String> = tls["alpn_offered"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let ours_version = str_of(tls, "version");
        match tshark.get(&client_port) {
            Some((sni, alpn, version)) => {
                checked.0 += 1;
                if *sni != ours_sni || *alpn != ours_alpn.join(",") || *version != ours_version {
                    oracle_failures.push(format!(
                        "tshark disagrees on port {client_port}->{port}: tshark ({sni}, {alpn}, {version}) vs ours ({ours_sni}, {}, {ours_version})",
                        ours_alpn.join(",")
                    ));
                }
            }
            None => oracle_failures.push(format!(
                "tshark saw no ClientHello for {client_port}->{port}"
            )),
        }
        if let Some(theirs) = ja4.get(&client_port) {
            checked.1 += 1;
            if *theirs != str_of(tls, "ja4") {
                oracle_failures.push(format!(
                    "Suricata JA4 disagrees on {client_port}->{port}: {theirs} vs ours {}",
                    str_of(tls, "ja4")
                ));
            }
        } else {
            checked.2 += 1;
        }
    }
    let tshark_bad = oracle_failures
        .iter()
        .filter(|f| f.starts_with("tshark"))
        .count();
    let ja4_bad = oracle_failures
        .iter()
        .filter(|f| f.starts_with("Suricata"))
        .count();
    let notes = vec![
        format!(
            "tshark 4.0 (`tls.handshake.extensions_server_name`, `tls.handshake.extensions_alpn_str`, \
             `tls.handshake.extensions.supported_version`): SNI, offered ALPN and negotiated version agree on {} of {} TLS connections.",
            checked.0 - tshark_bad.min(checked.0),
            checked.0
        ),
        format!(
            "Suricata 7 (eve.json `tls.ja4`): JA4 agrees on {} of {} connections Suricata logged ({} TLS connections had no Suricata TLS event).",
            checked.1 - ja4_bad.min(checked.1),
            checked.1,
            checked.2
        ),
    ];
    if let Ok(path) = std::env::var("MTLS_WRITE_ACCURACY") {
        // Only the live matrix's section is ours: the rest of the file is kept.
        let existing = std::fs::read_to_string(&path).unwrap_or_default();
        let text = scenarios::splice(&existing, &scenarios::render(&rows, &notes));
        std::fs::write(&path, text).expect("write accuracy.md");
    }
    assert!(
        failures.is_empty() && oracle_failures.is_empty(),
        "misclassified:\n{}\noracles disagree:\n{}",
        failures.join("\n"),
        oracle_failures.join("\n")
    );
    assert!(
        checked.0 >= tls_ports.len(),
        "tshark checked {} of {} TLS scenarios",
        checked.0,
        tls_ports.len()
    );
    assert!(
        checked.2 == 0 && checked.1 >= tls_ports.len(),
        "Suricata logged a JA4 for only {} connections of {} TLS scenarios ({} TLS connections without a Suricata TLS event)",
        checked.1,
        tls_ports.len(),
        checked.2
    );
}

/// Issue 15 (evasion): a client sends one version of its first bytes, then a
/// second, longer version at the same sequence numbers through a raw socket (see
/// tests/peers/python/overlap_peer.py). The receiving kernel keeps the first version
/// for the overlap; the live agent and `classify --pcap` on a capture of the same
/// packets must see what the server read, and say with low confidence that two
/// versions were on the wire.
#[test]
fn overlapping_segments_are_read_as_the_receiver_read_them() {
    require_root();
    let pair = integration_tests::NetnsPair::new("overlap", 110);
    let cg_server = integration_tests::Cgroup::new("overlap-server");
    let cg_client = integration_tests::Cgroup::new("overlap-client");
    let dir = integration_tests::TempDir::new();
    // The raw segment carries no TCP options: no timestamps on this connection.
    integration_tests::sh(
        "ip",
        &[
            "netns",
            "exec",
            pair.b.name(),
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.tcp_timestamps=0",
        ],
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/python/overlap_peer.py");
    let script = script.to_str().expect("utf8").to_owned();
    let cap = dir.path().join("overlap.pcapng");
    let cap_s = cap.to_str().expect("utf8").to_owned();
    let mut dumpcap = Spawn::new("dumpcap")
        .args([
            "-q",
            "-i",
            &format!("mtlsa{}a", pair.net),
            "-f",
            "tcp portrange 20110-20111",
            "-w",
            &cap_s,
        ])
        .netns(&pair.a)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    assert!(
        integration_tests::wait_for(Duration::from_secs(10), || cap.exists().then_some(()))
            .is_some(),
        "dumpcap did not start"
    );
    std::thread::sleep(Duration::from_millis(500));
    let agent = Agent::start(AgentOptions::default());

    // (port, order, protocol the server's bytes are)
    let cases = [
        (20110u16, "hello-first", "tls"),
        (20111, "request-first", "http1"),
    ];
    let server_ip = pair.a_v4().to_string();
    for (port, order, _) in cases {
        let mut server = Spawn::new("/usr/bin/python3")
            .args([script.as_str(), "server", &port.to_string()])
            .netns(&pair.a)
            .cgroup(&cg_server)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        integration_tests::peers::wait_listening(Some(&pair.a), port);
        let out = Spawn::new("/usr/bin/python3")
            .args([
                script.as_str(),
                "client",
                &server_ip,
                &port.to_string(),
                order,
            ])
            .netns(&pair.b)
            .cgroup(&cg_client)
            .run_ok(Duration::from_secs(30));
        let sent: Record = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("overlap_peer client printed {out:?}: {e}"));
        assert!(
            server.wait_timeout(Duration::from_secs(10)).is_some(),
            "the {order} server did not finish"
        );
        let mut got = String::new();
        if let Some(mut s) = server.inner().stdout.take() {
            let _ = std::io::Read::read_to_string(&mut s, &mut got);
        }
        let hex = |k: &str| str_of(&sent, k);
        let (first, second) = (hex("first"), hex("second"));
        // What Linux delivered: the first version, then the second's tail.
        let want = format!("{first}{}", &second[first.len()..]);
        assert_eq!(
            got.trim(),
            want,
            "{order}: the server read something else than the first version plus the second's tail"
        );
        assert_eq!(
            str_of(&sent, "answer"),
            "OK\n",
            "{order}: the exchange did not finish"
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    dumpcap.signal(libc::SIGINT);
    assert!(
        dumpcap.wait_timeout(Duration::from_secs(10)).is_some(),
        "dumpcap did not stop"
    );
    let exit = agent.stop();
    let pcap_out = Spawn::new(agent_bin().to_str().expect("utf8"))
        .args(["classify", "--pcap", &cap_s, "--json"])
        .run_ok(Duration::from_secs(60));
    let pcap_records: Vec<Record> = pcap_out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();

    let mut failures = Vec::new();
    for (port, order, protocol) in cases {
        let live = exit.records.iter().find(|r| {
            r["server"]["port"].as_u64() == Some(u64::from(port))
                && str_of(&r["server"], "addr") == server_ip
        });
        let offline = pcap_records
            .iter()
            .find(|r| r["destination_port"].as_u64() == Some(u64::from(port)));
        for (what, r) in [("live agent", live), ("classify --pcap", offline)] {
            let Some(r) = r else {
                failures.push(format!("{order}: no {what} record for port {port}"));
                continue;
            };
            let evidence = str_of(r, "evidence");
            if str_of(r, "protocol") != protocol
                || str_of(r, "confidence") != "low"
                || !evidence.contains("overlapping TCP segment")
            {
                failures.push(format!(
                    "{order} ({what}): expected protocol {protocol} with low confidence and the overlap in the \
                     evidence, got protocol {}, confidence {}: {evidence}",
                    str_of(r, "protocol"),
                    str_of(r, "confidence")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
