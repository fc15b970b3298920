//! Classification time per connection, on real captured handshakes
//! (`tests/data/handshakes.pcapng`): TLS 1.3 mutual TLS (size arithmetic), TLS 1.2
//! mutual TLS (X.509 parse of the client certificate), TLS 1.3 one-way, plaintext
//! HTTP. Run with `cargo bench -p mtls-auditor --bench classify` (or `cargo xtask bench`).

use std::{hint::black_box, path::Path};

use criterion::{Criterion, criterion_group, criterion_main};
use mtls_auditor::{classify, pcap};

fn bench(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/handshakes.pcapng");
    let conns = pcap::read(&path, 65_536).expect("capture").connections();
    let pick = |port: u16| {
        conns
            .iter()
            .find(|c| c.server.map(|s| s.port()) == Some(port))
            .unwrap_or_else(|| panic!("no connection to {port}"))
    };
    let mut group = c.benchmark_group("classify per connection");
    for (name, port) in [
        ("tls13 mutual (flight sizes)", 19001),
        ("tls13 one-way", 19002),
        ("tls12 mutual (x509 parse)", 19004),
        ("tls13 hello-retry mutual", 19006),
        ("plaintext http", 19008),
    ] {
        let conn = pick(port);
        group.bench_function(name, |b| {
            b.iter(|| classify::classify(black_box(&conn.classify_input())))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
