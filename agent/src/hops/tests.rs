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
        self.intercept_as(cookie, local, remote, original, ns, tgid, "envoy");
    }

    #[allow(clippy::too_many_arguments)]
    fn intercept_as(
        &mut self,
        cookie: u64,
        local: &str,
        remote: &str,
        original: &str,
        ns: u64,
        tgid: u32,
        name: &str,
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
            comm: comm(name),
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

#[test]
fn a_delivery_is_not_named_after_a_connection_refused_before_it_opened() {
    let mut n = Node::new();
    // b's proxy's upstream, accepted by a's proxy on 15006 ...
    n.upstream(3, 4, 40010);
    // ... then a client without a proxy, accepted on 15006 and refused (closed
    // unanswered under STRICT) ...
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
    // ... and only then a's proxy delivers b's request to its app.
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
    n.close(5);
    n.close(6);
    let delivery = n.take(5);
    let facts = n.hops.facts(&delivery, &plaintext());
    assert_eq!(facts.hop, Hop::ProxyToApp);
    assert_eq!(
        facts.delivers,
        Some(sa("10.213.0.2:40010")),
        "the refused connection (10.213.0.3:42000) closed before the delivery opened"
    );
    // A delivery that opens while the refused connection is still open may carry it.
    n.open(
        22,
        role::CLIENT,
        "10.213.0.3:42010",
        "10.213.0.1:8080",
        30,
        900,
        "curl",
        0,
    );
    n.open(
        23,
        role::SERVER,
        "10.213.0.1:15006",
        "10.213.0.3:42010",
        NS_A,
        0,
        "",
        0,
    );
    n.intercept(
        23,
        "10.213.0.1:15006",
        "10.213.0.3:42010",
        "10.213.0.1:8080",
        NS_A,
        PROXY_A,
    );
    n.open(
        7,
        role::CLIENT,
        "127.0.0.6:50010",
        "10.213.0.1:8080",
        NS_A,
        PROXY_A,
        "envoy",
        1337,
    );
    n.open(
        8,
        role::SERVER,
        "10.213.0.1:8080",
        "127.0.0.6:50010",
        NS_A,
        APP_A,
        "python3",
        0,
    );
    for c in [7, 8, 22, 23] {
        n.close(c);
    }
    let delivery = n.take(7);
    let facts = n.hops.facts(&delivery, &plaintext());
    assert_eq!(facts.delivers, Some(sa("10.213.0.3:42010")));
}

const NS_W: u64 = 40;
const NS_C: u64 = 50;
const NS_ZT: u64 = 60;
const ZTUNNEL: u32 = 800;
const WAYPOINT: u32 = 900;
const VIP: &str = "10.213.0.100:8080";
const W_HBONE: &str = "10.213.0.50:15008";

/// An example-a service: its address and a's.
fn service_a(x: SocketAddr, y: SocketAddr) -> bool {
    let a = |s: SocketAddr| s == sa(VIP) || s == sa("10.213.0.1:8080");
    a(x) && a(y)
}

impl Node {
    /// An ambient app connection of `ns`'s app from `client` to `original`,
    /// redirected to ztunnel's 15001 there.
    fn ambient_request(&mut self, app: u64, zt: u64, client: &str, original: &str, ns: u64) {
        self.open(app, role::CLIENT, client, original, ns, APP_B, "curl", 0);
        self.open(zt, role::SERVER, "127.0.0.1:15001", client, ns, 0, "", 0);
        self.intercept_as(
            zt,
            "127.0.0.1:15001",
            client,
            original,
            ns,
            ZTUNNEL,
            "ztunnel",
        );
    }

    /// An HBONE connection from `client` (`tgid` in `from`) to `server`'s 15008,
    /// accepted in `to`.
    #[allow(clippy::too_many_arguments)]
    fn hbone(
        &mut self,
        c: u64,
        s: u64,
        client: &str,
        server: &str,
        from: u64,
        to: u64,
        tgid: u32,
        name: &str,
    ) {
        self.open(c, role::CLIENT, client, server, from, tgid, name, 0);
        self.open(s, role::SERVER, server, client, to, 0, "", 0);
    }

    /// ztunnel delivers to a's app from `client` (its address kept).
    fn ztunnel_delivery(&mut self, c: u64, s: u64, client: &str) {
        self.open(
            c,
            role::CLIENT,
            client,
            "10.213.0.1:8080",
            NS_A,
            ZTUNNEL,
            "ztunnel",
            0,
        );
        self.open(
            s,
            role::SERVER,
            "10.213.0.1:8080",
            client,
            NS_A,
            APP_A,
            "python3",
            0,
        );
    }
}

fn hbone_mtls() -> Classification {
    Classification {
        mesh: None,
        ..mtls()
    }
}

#[test]
fn a_request_through_a_waypoint_is_linked_to_both_of_its_hbone_legs() {
    let mut n = Node::new();
    // b's app asks for the service address; ztunnel sends it to the waypoint.
    n.ambient_request(1, 2, "10.213.0.2:40000", VIP, NS_B);
    n.hbone(
        10,
        11,
        "10.213.0.2:41000",
        W_HBONE,
        NS_B,
        NS_W,
        ZTUNNEL,
        "ztunnel",
    );
    // The waypoint (no proxy: it intercepts nothing) opens its own HBONE to a.
    n.hbone(
        12,
        13,
        "10.213.0.50:42000",
        "10.213.0.1:15008",
        NS_W,
        NS_A,
        WAYPOINT,
        "envoy",
    );
    // A direct HBONE connection of b's ztunnel to a (for pod-address traffic).
    n.hbone(
        30,
        31,
        "10.213.0.2:41500",
        "10.213.0.1:15008",
        NS_B,
        NS_A,
        ZTUNNEL,
        "ztunnel",
    );
    // a's ztunnel delivers from the waypoint's address.
    n.ztunnel_delivery(14, 15, "10.213.0.50:43000");
    for c in [14, 15, 1, 2] {
        n.close(c);
    }

    let app = n.take(1);
    assert_eq!(n.hops.facts(&app, &plaintext()).hop, Hop::AppToProxy);
    let (cls, link) = n
        .hops
        .upstream_evidence(&app, &n.table, &service_a, &|_| hbone_mtls());
    let link = link.expect("linked");
    assert_eq!(
        (link.linked_by, link.socket_cookie),
        (link::LinkedBy::Waypoint, 10),
        "the tunnel to the waypoint, not the direct one to an endpoint: {link:?}"
    );
    let w = link.waypoint.as_ref().expect("waypoint named");
    assert_eq!((w.pid, w.comm.as_str()), (WAYPOINT, "envoy"));
    assert_eq!(cls.connection_security_policy, SecurityClass::MutualTls);
    assert!(
        cls.evidence.contains(
            "HBONE connection to waypoint envoy (pid 900) 10.213.0.2:41000 -> 10.213.0.50:15008"
        ),
        "{}",
        cls.evidence
    );

    let delivery = n.take(14);
    let facts = n.hops.facts(&delivery, &plaintext());
    assert_eq!(facts.hop, Hop::ProxyToApp);
    let (cls, t) = n
        .hops
        .tunnel_evidence(&delivery, &n.table, &|_| hbone_mtls())
        .expect("out of a tunnel");
    assert_eq!(
        t.client,
        sa("10.213.0.50:42000"),
        "the waypoint's leg decides"
    );
    assert_eq!(t.server, sa("10.213.0.1:15008"));
    let w = t.waypoint.as_ref().expect("through a waypoint");
    assert_eq!(w.clients, Some(1));
    let leg = w.received_over.as_ref().expect("the client's leg");
    assert_eq!(
        (leg.client, leg.server),
        (sa("10.213.0.2:41000"), sa(W_HBONE))
    );
    assert_eq!(t.origin(), sa("10.213.0.2:41000"), "the real client");
    assert!(
        cls.evidence.contains("out of HBONE connection 10.213.0.50:42000 -> 10.213.0.1:15008 from waypoint envoy (pid 900), which received it over HBONE connection 10.213.0.2:41000 -> 10.213.0.50:15008 (mutual_tls)"),
        "{}",
        cls.evidence
    );

    // b's app asking for a's own address goes over the direct tunnel.
    n.ambient_request(3, 4, "10.213.0.2:40010", "10.213.0.1:8080", NS_B);
    n.close(3);
    n.close(4);
    let app = n.take(3);
    let (_, link) = n
        .hops
        .upstream_evidence(&app, &n.table, &service_a, &|_| hbone_mtls());
    let link = link.expect("linked");
    assert_eq!(
        (link.linked_by, link.socket_cookie),
        (link::LinkedBy::Tunnel, 30)
    );
    assert!(link.waypoint.is_none());

    // A second client sends through the waypoint: a delivery then cannot be
    // told apart, and stays the waypoint's.
    n.hbone(
        40,
        41,
        "10.213.0.3:41700",
        W_HBONE,
        NS_C,
        NS_W,
        ZTUNNEL,
        "ztunnel",
    );
    n.ztunnel_delivery(16, 17, "10.213.0.50:43010");
    n.close(16);
    n.close(17);
    let delivery = n.take(16);
    let (cls, t) = n
        .hops
        .tunnel_evidence(&delivery, &n.table, &|_| hbone_mtls())
        .expect("out of a tunnel");
    let w = t.waypoint.as_ref().expect("through a waypoint");
    assert_eq!(w.clients, Some(2));
    assert!(w.received_over.is_none());
    assert_eq!(t.origin(), sa("10.213.0.50:42000"));
    assert!(
        cls.evidence.contains("relaying for 2 clients"),
        "{}",
        cls.evidence
    );

    // The waypoint's HBONE legs are tunnels, counted by nobody.
    n.close(10);
    n.close(11);
    let t1 = n.take(10);
    let f = n.hops.facts(&t1, &hbone_mtls());
    assert_eq!(f.hop, Hop::ProxyTunnel);
    assert!(!f.reporters(true, true).any());
    n.close(12);
    n.close(13);
    let t2 = n.take(12);
    let f = n.hops.facts(&t2, &hbone_mtls());
    assert_eq!(f.hop, Hop::ProxyTunnel);
    assert!(!f.reporters(true, true).any());
}

#[test]
fn ztunnels_own_ports_and_dns_are_exempt_with_their_reason() {
    let mut n = Node::new();
    // ztunnel is known once it intercepted in b's pod.
    n.ambient_request(1, 2, "10.213.0.2:40000", "10.213.0.1:8080", NS_B);
    let check = |n: &Node, c: &Connection, off: &[&str]| {
        let facts = n.hops.facts(c, &plaintext());
        BuiltinExemptions::with_disabled(&off.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("known")
            .check(&facts, c, &n.hops)
    };
    // The kubelet probes ztunnel's readiness in ztunnel's own pod.
    n.open(
        50,
        role::CLIENT,
        "10.213.0.254:46000",
        "10.213.0.200:15021",
        99,
        300,
        "kubelet",
        0,
    );
    n.open(
        51,
        role::SERVER,
        "10.213.0.200:15021",
        "10.213.0.254:46000",
        NS_ZT,
        ZTUNNEL,
        "ztunnel",
        0,
    );
    n.close(50);
    n.close(51);
    let probe = n.take(50);
    let (b, why) = check(&n, &probe, &[]).expect("exempt");
    assert_eq!(b, Builtin::IstioZtunnel);
    assert!(
        why.contains("port 15021 of ztunnel (pid 800)") && why.contains("readiness"),
        "{why}"
    );
    assert!(
        check(&n, &probe, &["istio-ztunnel"]).is_none(),
        "no other exemption covers it"
    );
    // Prometheus scrapes ztunnel's metrics.
    n.open(
        52,
        role::CLIENT,
        "10.213.0.4:47000",
        "10.213.0.200:15020",
        70,
        301,
        "prometheus",
        0,
    );
    n.open(
        53,
        role::SERVER,
        "10.213.0.200:15020",
        "10.213.0.4:47000",
        NS_ZT,
        ZTUNNEL,
        "ztunnel",
        0,
    );
    n.close(52);
    n.close(53);
    let scrape = n.take(52);
    let (b, why) = check(&n, &scrape, &[]).expect("exempt");
    assert_eq!(b, Builtin::IstioZtunnel);
    assert!(why.contains("Prometheus metrics"), "{why}");
    // Another port of ztunnel's own pod is not exempt.
    n.open(
        54,
        role::CLIENT,
        "10.213.0.4:47010",
        "10.213.0.200:9999",
        70,
        301,
        "curl",
        0,
    );
    n.open(
        55,
        role::SERVER,
        "10.213.0.200:9999",
        "10.213.0.4:47010",
        NS_ZT,
        ZTUNNEL,
        "ztunnel",
        0,
    );
    n.close(54);
    n.close(55);
    let other = n.take(54);
    assert!(check(&n, &other, &[]).is_none());
    // b's app's DNS over TCP, answered by ztunnel's DNS proxy inside b's pod.
    n.open(
        56,
        role::CLIENT,
        "10.213.0.2:48000",
        "127.0.0.1:15053",
        NS_B,
        APP_B,
        "python3",
        0,
    );
    n.open(
        57,
        role::SERVER,
        "127.0.0.1:15053",
        "10.213.0.2:48000",
        NS_B,
        ZTUNNEL,
        "ztunnel",
        0,
    );
    n.close(56);
    n.close(57);
    let dns = n.take(56);
    let (b, why) = check(&n, &dns, &[]).expect("exempt");
    assert_eq!(b, Builtin::IstioDns);
    assert!(
        why.contains("answered by ztunnel (pid 800) on 15053"),
        "{why}"
    );
    assert!(check(&n, &dns, &["istio-dns"]).is_none());
}
