//! The hops stage on connections built from kernel events, as the pipeline feeds
//! them: an Istio-style sidecar pair on one node.

use std::net::SocketAddr;

use agent_common::{ConnEvent, EventHeader, OrigDstEvent, family, kind, role};

use super::*;
use crate::{
    classify::{Confidence, Outcome, Protocol, SecurityClass},
    flows::{FlowConfig, FlowTable},
};

const NS_A: u64 = 10;
const NS_B: u64 = 20;
const APP_B: u32 = 100;
const PROXY_B: u32 = 500;
const PROXY_A: u32 = 600;
const APP_A: u32 = 700;

fn raw(a: SocketAddr) -> ([u8; 16], u16) {
    let mut out = [0u8; 16];
    match a.ip() {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    (out, a.port())
}

fn comm(name: &str) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..name.len()].copy_from_slice(name.as_bytes());
    c
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

struct Node {
    table: FlowTable,
    hops: Hops,
    out: Vec<Connection>,
    now: u64,
}

impl Node {
    fn new() -> Self {
        Self {
            table: FlowTable::new(FlowConfig::default(), None),
            hops: Hops::new(HopsConfig::default()),
            out: Vec::new(),
            now: 1_000_000,
        }
    }

    fn feed(&mut self, ev: Event<'_>) {
        self.now += 20_000_000;
        self.hops.on_event(&ev);
        self.table.on_event(ev);
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        cookie: u64,
        r: u16,
        local: &str,
        remote: &str,
        ns: u64,
        tgid: u32,
        name: &str,
        uid: u32,
    ) {
        let (la, lp) = raw(sa(local));
        let (ra, rp) = raw(sa(remote));
        let ev = ConnEvent {
            hdr: EventHeader {
                kind: kind::ESTABLISHED,
                _pad0: 0,
                cookie,
                ts_ns: self.now,
            },
            netns_cookie: ns,
            cgroup_id: 0,
            bytes_sent: 0,
            bytes_received: 0,
            local_addr: la,
            remote_addr: ra,
            local_port: lp,
            remote_port: rp,
            family: family::INET,
            role: r,
            pid: tgid,
            tgid,
            comm: comm(name),
            egress_base: 0,
            ingress_base: 0,
            sock_flags: 0,
            uid,
        };
        self.feed(Event::Conn(ConnKind::Established, ev));
    }

    fn intercept(
        &mut self,
        cookie: u64,
        local: &str,
        remote: &str,
        original: &str,
        ns: u64,
        tgid: u32,
    ) {
        let (la, lp) = raw(sa(local));
        let (ra, rp) = raw(sa(remote));
        let (oa, op) = raw(sa(original));
        let ev = OrigDstEvent {
            hdr: EventHeader {
                kind: kind::ORIGINAL_DST,
                _pad0: 0,
                cookie,
                ts_ns: self.now,
            },
            netns_cookie: ns,
            cgroup_id: 0,
            local_addr: la,
            remote_addr: ra,
            original_addr: oa,
            local_port: lp,
            remote_port: rp,
            original_port: op,
            family: family::INET,
            pid: tgid,
            tgid,
            uid: 1337,
            gid: 1337,
            comm: comm("envoy"),
            result: 0,
            original_family: family::INET,
            _pad0: 0,
        };
        self.feed(Event::OriginalDst(ev));
    }

    fn close(&mut self, cookie: u64) {
        let ev = ConnEvent {
            hdr: EventHeader {
                kind: kind::CLOSED,
                _pad0: 0,
                cookie,
                ts_ns: self.now,
            },
            netns_cookie: 0,
            cgroup_id: 0,
            bytes_sent: 0,
            bytes_received: 0,
            local_addr: [0; 16],
            remote_addr: [0; 16],
            local_port: 0,
            remote_port: 0,
            family: family::INET,
            role: role::UNKNOWN,
            pid: 0,
            tgid: 0,
            comm: [0; 16],
            egress_base: 0,
            ingress_base: 0,
            sock_flags: 0,
            uid: 0,
        };
        self.feed(Event::Conn(ConnKind::Closed, ev));
        let now = self.now;
        let out = &mut self.out;
        self.table.tick(now, &mut |c| out.push(c));
    }

    fn take(&mut self, client_cookie: u64) -> Connection {
        let i = self
            .out
            .iter()
            .position(|c| {
                c.client_end
                    .as_ref()
                    .is_some_and(|e| e.cookie == client_cookie)
            })
            .expect("connection emitted");
        self.out.remove(i)
    }

    /// An app connection from b's app to a:8080, redirected to b's proxy.
    fn app_request(&mut self, app: u64, proxy: u64, port: u16) {
        let client = format!("10.213.0.2:{port}");
        self.open(
            app,
            role::CLIENT,
            &client,
            "10.213.0.1:8080",
            NS_B,
            APP_B,
            "curl",
            0,
        );
        self.open(
            proxy,
            role::SERVER,
            "127.0.0.1:15001",
            &client,
            NS_B,
            0,
            "",
            0,
        );
        self.intercept(
            proxy,
            "127.0.0.1:15001",
            &client,
            "10.213.0.1:8080",
            NS_B,
            PROXY_B,
        );
    }

    /// b's proxy's upstream connection to a:8080, accepted by a's proxy on 15006.
    fn upstream(&mut self, client: u64, server: u64, port: u16) {
        let c = format!("10.213.0.2:{port}");
        self.open(
            client,
            role::CLIENT,
            &c,
            "10.213.0.1:8080",
            NS_B,
            PROXY_B,
            "envoy",
            1337,
        );
        self.open(server, role::SERVER, "10.213.0.1:15006", &c, NS_A, 0, "", 0);
        self.intercept(
            server,
            "10.213.0.1:15006",
            &c,
            "10.213.0.1:8080",
            NS_A,
            PROXY_A,
        );
    }
}

fn mtls() -> Classification {
    Classification {
        connection_security_policy: SecurityClass::MutualTls,
        confidence: Confidence::High,
        evidence: "TLS 1.3 client certificate flight".into(),
        protocol: Protocol::Tls,
        outcome: Outcome::Completed,
        tls: None,
        starttls: None,
        http: None,
        mesh: Some(MeshMarker::IstioSidecar),
        tunnel: None,
    }
}

fn plaintext() -> Classification {
    Classification {
        connection_security_policy: SecurityClass::None,
        confidence: Confidence::High,
        evidence: "HTTP/1.x".into(),
        protocol: Protocol::Http1,
        outcome: Outcome::Completed,
        tls: None,
        starttls: None,
        http: None,
        mesh: None,
        tunnel: None,
    }
}

fn no_service(_: SocketAddr, _: SocketAddr) -> bool {
    false
}

#[test]
fn every_hop_of_a_sidecar_request_is_named_and_the_app_is_judged_by_its_upstream() {
    let mut n = Node::new();
    n.app_request(1, 2, 40000);
    n.upstream(3, 4, 40010);
    // a's proxy delivers to a's app from 127.0.0.6.
    n.open(
        5,
        role::CLIENT,
        "127.0.0.6:50000",
        "10.213.0.1:8080",
        NS_A,
        PROXY_A,
        "envoy",
        1337,
    );
    n.open(
        6,
        role::SERVER,
        "10.213.0.1:8080",
        "127.0.0.6:50000",
        NS_A,
        APP_A,
        "python3",
        0,
    );
    assert_eq!(n.hops.proxies(), 2);
    assert_eq!(
        n.table.stats().interceptions_joined,
        2,
        "app+proxy and proxy+proxy joined"
    );

    for c in [1, 2, 5, 6] {
        n.close(c);
    }
    let app = n.take(1);
    let facts = n.hops.facts(&app, &plaintext());
    assert_eq!(facts.hop, Hop::AppToProxy);
    let i = facts.interceptor.as_ref().expect("interceptor");
    assert_eq!((i.pid, i.accepted_on), (PROXY_B, sa("127.0.0.1:15001")));
    assert_eq!(
        app.server,
        sa("10.213.0.1:8080"),
        "the original destination"
    );
    // The upstream (still open, pooled for later) decides.
    let (cls, link) = n
        .hops
        .upstream_evidence(&app, &n.table, &no_service, &|_| mtls());
    assert_eq!(cls.connection_security_policy, SecurityClass::MutualTls);
    let link = link.expect("linked");
    assert_eq!(link.socket_cookie, 3);
    assert!(link.open && !link.pooled, "{link:?}");
    assert!(cls.evidence.starts_with("carried by envoy (pid 500) over its upstream connection 10.213.0.2:40010 -> 10.213.0.1:8080: "), "{}", cls.evidence);

    let delivery = n.take(5);
    let facts = n.hops.facts(&delivery, &plaintext());
    assert_eq!(facts.hop, Hop::ProxyToApp);
    assert_eq!(facts.delivers, Some(sa("10.213.0.2:40010")));
    let (b, why) = BuiltinExemptions::default()
        .check(&facts, &delivery, &n.hops)
        .expect("exempt");
    assert_eq!(b, Builtin::ProxyToApp);
    assert!(
        why.contains("envoy (pid 600) delivers inbound traffic"),
        "{why}"
    );
    assert!(
        BuiltinExemptions::with_disabled(&["proxy-to-app".into()])
            .expect("known")
            .check(&facts, &delivery, &n.hops)
            .is_none()
    );

    // A second app connection a second later reuses the pooled upstream.
    n.now += 1_000_000_000;
    n.app_request(7, 8, 40020);
    n.close(7);
    n.close(8);
    let app2 = n.take(7);
    let (_, link) = n
        .hops
        .upstream_evidence(&app2, &n.table, &no_service, &|_| mtls());
    let link = link.expect("linked");
    assert_eq!(link.socket_cookie, 3);
    assert!(link.pooled, "opened before this app connection: {link:?}");

    // The upstream closes: its server end is a's proxy, on the original port.
    n.close(3);
    n.close(4);
    let up = n.take(3);
    assert_eq!(up.server.port(), 8080);
    let facts = n.hops.facts(&up, &mtls());
    assert_eq!(facts.hop, Hop::ProxyUpstream);
    assert_eq!(facts.interceptor.as_ref().map(|i| i.pid), Some(PROXY_A));
    assert_eq!(
        facts.hop.reporters(true, true),
        Reporters {
            source: false,
            destination: true
        },
        "counted where it arrived, not again at the source"
    );
    n.hops.upstream_finished(&up, &mtls());
    // An app connection that finishes after the upstream closed still links to it.
    let (cls, link) = n
        .hops
        .upstream_evidence(&app2, &n.table, &no_service, &|_| plaintext());
    assert_eq!(cls.connection_security_policy, SecurityClass::MutualTls);
    assert!(!link.expect("linked").open);
}

#[test]
fn without_upstream_evidence_the_app_connection_is_unknown() {
    let mut n = Node::new();
    n.app_request(1, 2, 40000);
    n.close(1);
    n.close(2);
    let app = n.take(1);
    let (cls, link) = n
        .hops
        .upstream_evidence(&app, &n.table, &no_service, &|_| mtls());
    assert!(link.is_none());
    assert_eq!(cls.connection_security_policy, SecurityClass::Unknown);
    assert!(
        cls.evidence
            .contains("no upstream connection of that proxy to 10.213.0.1:8080"),
        "{}",
        cls.evidence
    );
}

#[test]
fn a_process_with_the_proxy_uid_that_never_intercepts_is_an_ordinary_client() {
    let mut n = Node::new();
    n.app_request(1, 2, 40000); // b's proxy is known
    n.open(
        10,
        role::CLIENT,
        "10.213.0.2:41000",
        "10.213.0.1:9090",
        NS_B,
        4242,
        "sneaky",
        1337,
    );
    n.open(
        11,
        role::SERVER,
        "10.213.0.1:9090",
        "10.213.0.2:41000",
        NS_A,
        APP_A,
        "python3",
        0,
    );
    n.close(10);
    n.close(11);
    let c = n.take(10);
    let facts = n.hops.facts(&c, &plaintext());
    assert_eq!(facts.hop, Hop::Direct);
    assert_eq!(c.client_end.as_ref().and_then(|e| e.uid), Some(1337));
}

#[test]
fn a_client_without_a_proxy_reaching_a_server_proxy_is_proxy_inbound() {
    let mut n = Node::new();
    n.open(
        20,
        role::CLIENT,
        "10.213.0.3:42000",
        "10.213.0.1:8080",
        30,
        900,
        "curl",
        0,
    );
    n.open(
        21,
        role::SERVER,
        "10.213.0.1:15006",
        "10.213.0.3:42000",
        NS_A,
        0,
        "",
        0,
    );
    n.intercept(
        21,
        "10.213.0.1:15006",
        "10.213.0.3:42000",
        "10.213.0.1:8080",
        NS_A,
        PROXY_A,
    );
    n.close(20);
    n.close(21);
    let c = n.take(20);
    let facts = n.hops.facts(&c, &plaintext());
    assert_eq!(facts.hop, Hop::ProxyInbound);
    assert_eq!(c.server.port(), 8080, "judged at the original port");
    assert_eq!(
        facts.hop.reporters(true, true),
        Reporters {
            source: true,
            destination: true
        }
    );
}
