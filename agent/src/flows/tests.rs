//! Flow table tests: joining ends, lingering, settling, interceptions.

use agent_common::{EventHeader, family, kind};

use super::*;

fn conn_event(
    k: u32,
    cookie: u64,
    r: u16,
    local: ([u8; 4], u16),
    remote: ([u8; 4], u16),
) -> ConnEvent {
    let mut la = [0u8; 16];
    la[..4].copy_from_slice(&local.0);
    let mut ra = [0u8; 16];
    ra[..4].copy_from_slice(&remote.0);
    ConnEvent {
        hdr: EventHeader {
            kind: k,
            _pad0: 0,
            cookie,
            ts_ns: 1_000,
        },
        netns_cookie: 1,
        cgroup_id: 0,
        bytes_sent: 10,
        bytes_received: 20,
        local_addr: la,
        remote_addr: ra,
        local_port: local.1,
        remote_port: remote.1,
        family: family::INET,
        role: r,
        pid: 0,
        tgid: 0,
        comm: [0; 16],
        egress_base: 0,
        ingress_base: 0,
        sock_flags: 0,
        uid: 0,
    }
}

fn data(cookie: u64, dir: u8, offset: u32, bytes: &[u8]) -> DataHeader {
    DataHeader {
        hdr: EventHeader {
            kind: kind::DATA,
            _pad0: 0,
            cookie,
            ts_ns: 2_000,
        },
        cgroup_id: 0,
        offset,
        len: bytes.len() as u32,
        seg_len: bytes.len() as u32,
        direction: dir,
        tcp_flags: 0,
        flags: 0,
        _pad0: 0,
        pid: 0,
        tgid: 0,
        comm: [0; 16],
    }
}

/// Client end (cookie 1) and server end (cookie 2) of one connection.
fn open_pair(t: &mut FlowTable, c: ([u8; 4], u16), s: ([u8; 4], u16)) {
    t.on_event(Event::Conn(
        ConnKind::Established,
        conn_event(kind::ESTABLISHED, 1, role::CLIENT, c, s),
    ));
    t.on_event(Event::Conn(
        ConnKind::Established,
        conn_event(kind::ESTABLISHED, 2, role::SERVER, s, c),
    ));
}

#[test]
fn two_local_ends_become_one_connection() {
    let mut t = FlowTable::new(FlowConfig::default(), None);
    let c = ([127, 0, 0, 1], 40000);
    let s = ([127, 0, 0, 1], 8080);
    open_pair(&mut t, c, s);
    assert_eq!(t.len(), 1);
    let req = b"GET / HTTP/1.1\r\n\r\n";
    t.on_event(Event::Data(data(1, direction::EGRESS, 0, req), req));
    t.on_event(Event::Data(data(2, direction::INGRESS, 0, req), req));
    t.on_event(Event::Conn(
        ConnKind::Closed,
        conn_event(kind::CLOSED, 1, role::UNKNOWN, c, s),
    ));
    let mut out = Vec::new();
    t.tick(1_500, &mut |c| out.push(c));
    assert!(out.is_empty(), "server end still open");
    t.on_event(Event::Conn(
        ConnKind::Closed,
        conn_event(kind::CLOSED, 2, role::UNKNOWN, s, c),
    ));
    t.tick(1_500, &mut |c| out.push(c));
    assert_eq!(out.len(), 1);
    let conn = &out[0];
    assert!(conn.both_ends());
    assert_eq!(conn.client_to_server().unwrap().contiguous(), req);
    assert_eq!(conn.byte_counts(), (Some(10), Some(20)));
    assert!(t.is_empty());
}

#[test]
fn a_connection_on_recycled_ends_starts_empty() {
    let mut t = FlowTable::new(FlowConfig::default(), None);
    let c = ([127, 0, 0, 1], 40000);
    let s = ([127, 0, 0, 1], 8080);
    let close_both = |t: &mut FlowTable, c, s| {
        for (cookie, l, r) in [(1, c, s), (2, s, c)] {
            t.on_event(Event::Conn(
                ConnKind::Closed,
                conn_event(kind::CLOSED, cookie, role::UNKNOWN, l, r),
            ));
        }
    };
    open_pair(&mut t, c, s);
    let first = b"GET /first HTTP/1.1\r\n\r\n";
    t.on_event(Event::Data(data(1, direction::EGRESS, 0, first), first));
    t.on_event(Event::Data(
        data(2, direction::EGRESS, 0, b"HTTP/1.1 200"),
        b"HTTP/1.1 200",
    ));
    close_both(&mut t, c, s);
    let mut out = Vec::new();
    t.tick(1_500, &mut |c| out.push(c));
    assert_eq!(out.len(), 1);
    t.recycle(out.drain(..));
    assert_eq!((t.spares.ends.len(), t.spares.streams.len()), (2, 2));

    // The same cookies and ports again: only the new bytes, the new role's facts.
    open_pair(&mut t, c, s);
    assert!(t.spares.ends.is_empty());
    let second = b"SSH-2.0-x\r\n";
    t.on_event(Event::Data(data(1, direction::EGRESS, 0, second), second));
    close_both(&mut t, c, s);
    t.tick(1_500, &mut |c| out.push(c));
    let conn = &out[0];
    assert_eq!(conn.client_to_server().unwrap().contiguous(), second);
    assert!(conn.server_to_client().is_none_or(|s| s.captured() == 0));
    assert!(conn.client_end.as_ref().unwrap().closed_ns.is_some());
    assert_eq!(
        t.spares.streams.len(),
        1,
        "the server end took none: it sent nothing"
    );
}

#[test]
fn loopback_pairs_in_different_namespaces_stay_apart() {
    let mut t = FlowTable::new(FlowConfig::default(), None);
    let c = ([127, 0, 0, 1], 40000);
    let s = ([127, 0, 0, 1], 8080);
    let mut a = conn_event(kind::ESTABLISHED, 1, role::CLIENT, c, s);
    a.netns_cookie = 10;
    let mut b = conn_event(kind::ESTABLISHED, 2, role::SERVER, s, c);
    b.netns_cookie = 20;
    t.on_event(Event::Conn(ConnKind::Established, a));
    t.on_event(Event::Conn(ConnKind::Established, b));
    assert_eq!(t.len(), 2);
}

/// A table whose single ends wait 100 ns for their peer.
fn lingering_table() -> FlowTable {
    FlowTable::new(
        FlowConfig {
            linger_ns: 100,
            ..FlowConfig::default()
        },
        None,
    )
}

fn establish(
    t: &mut FlowTable,
    cookie: u64,
    r: u16,
    local: ([u8; 4], u16),
    remote: ([u8; 4], u16),
) {
    t.on_event(Event::Conn(
        ConnKind::Established,
        conn_event(kind::ESTABLISHED, cookie, r, local, remote),
    ));
}

fn close(t: &mut FlowTable, cookie: u64, local: ([u8; 4], u16), remote: ([u8; 4], u16)) {
    t.on_event(Event::Conn(
        ConnKind::Closed,
        conn_event(kind::CLOSED, cookie, role::UNKNOWN, local, remote),
    ));
}

#[test]
fn single_end_waits_for_the_linger() {
    let mut t = lingering_table();
    let c = ([10, 213, 0, 2], 40000);
    let s = ([10, 213, 0, 1], 443);
    establish(&mut t, 1, role::CLIENT, c, s);
    close(&mut t, 1, c, s);
    let mut out = Vec::new();
    t.tick(1_050, &mut |c| out.push(c));
    assert!(out.is_empty());
    t.tick(1_200, &mut |c| out.push(c));
    assert_eq!(out.len(), 1);
}

#[test]
fn a_closed_end_whose_peer_joins_late_waits_for_the_peers_close() {
    let mut t = lingering_table();
    let c = ([127, 0, 0, 1], 40000);
    let s = ([127, 0, 0, 1], 8080);
    establish(&mut t, 1, role::CLIENT, c, s);
    close(&mut t, 1, c, s);
    let mut out = Vec::new();
    t.tick(1_050, &mut |c| out.push(c));
    assert!(out.is_empty(), "one end closed: waits for the linger");
    // The server end is announced (it spoke, or closed) within the linger.
    establish(&mut t, 2, role::SERVER, s, c);
    t.tick(5_000, &mut |c| out.push(c));
    assert!(out.is_empty(), "the joined server end is still open");
    close(&mut t, 2, s, c);
    t.tick(5_000, &mut |c| out.push(c));
    assert_eq!(out.len(), 1);
    assert!(out[0].both_ends());
    t.tick(5_000, &mut |c| out.push(c));
    assert_eq!(out.len(), 1, "emitted once");
    assert!(t.is_empty());
}

#[test]
fn data_of_unknown_sockets_is_counted() {
    let mut t = FlowTable::new(FlowConfig::default(), None);
    t.on_event(Event::Data(data(9, direction::EGRESS, 0, b"x"), b"x"));
    assert_eq!(t.stats().orphan_events, 1);
}

#[test]
fn a_settled_connection_is_marked_decided_and_keeps_no_more_bytes() {
    let mut t = FlowTable::new(FlowConfig::default(), None);
    let c = ([10, 213, 0, 2], 40000);
    let s = ([10, 213, 0, 1], 8080);
    open_pair(&mut t, c, s);
    let judge = &mut |conn: &Connection| {
        let cls = conn.classify();
        cls.is_settled().then_some(cls)
    };
    let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    t.on_event(Event::Data(data(1, direction::EGRESS, 0, req), req));
    assert_eq!(t.settle(judge), 0, "no answer yet: not settled");
    assert_eq!(t.settle(judge), 0, "nothing new: not looked at again");
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    t.on_event(Event::Data(data(2, direction::EGRESS, 0, resp), resp));
    assert_eq!(t.settle(judge), 1);
    let mut decided: Vec<u64> = t.take_decided().collect();
    decided.sort_unstable();
    assert_eq!(decided, [1, 2], "both ends are marked");
    // Bytes already in flight when the mark was set are counted, not kept.
    let more = b"GET /2 HTTP/1.1\r\n\r\n";
    let at = req.len() as u32;
    t.on_event(Event::Data(data(1, direction::EGRESS, at, more), more));
    assert_eq!(t.settle(judge), 0);
    for (cookie, a, b) in [(1, c, s), (2, s, c)] {
        t.on_event(Event::Conn(
            ConnKind::Closed,
            conn_event(kind::CLOSED, cookie, role::UNKNOWN, a, b),
        ));
    }
    let mut out = Vec::new();
    t.tick(1_500, &mut |c| out.push(c));
    let conn = &out[0];
    let cls = conn.settled.as_deref().expect("settled");
    assert_eq!(cls.protocol, crate::classify::Protocol::Http1);
    assert!(
        conn.ends().all(|e| e.marked_decided),
        "both ends carry the mark, so the finish clears what the kernel did not consume"
    );
    let c2s = conn.client_to_server().expect("c2s");
    assert_eq!(c2s.captured(), req.len() as u64, "captured before settling");
    assert!(c2s.contiguous().is_empty(), "the buffer was freed");
    assert_eq!(
        conn.client_end.as_ref().map(|e| e.egress().seen_bytes),
        Some((req.len() + more.len()) as u64)
    );
}

#[test]
fn conflicting_overlaps_keep_the_first_bytes_lower_confidence_and_are_counted() {
    let mut t = FlowTable::new(FlowConfig::default(), None);
    let c = ([10, 213, 0, 2], 40000);
    let s = ([10, 213, 0, 1], 8080);
    open_pair(&mut t, c, s);
    let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    // The server receives the request, then other bytes at the same offsets.
    let other = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 and more bytes than before";
    t.on_event(Event::Data(data(2, direction::INGRESS, 0, req), req));
    t.on_event(Event::Data(data(2, direction::INGRESS, 0, other), other));
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    t.on_event(Event::Data(data(2, direction::EGRESS, 0, resp), resp));
    assert_eq!(t.stats().overlap_conflicts, 1);
    for (cookie, a, b) in [(1, c, s), (2, s, c)] {
        t.on_event(Event::Conn(
            ConnKind::Closed,
            conn_event(kind::CLOSED, cookie, role::UNKNOWN, a, b),
        ));
    }
    let mut out = Vec::new();
    t.tick(1_500, &mut |c| out.push(c));
    let conn = &out[0];
    let c2s = conn.client_to_server().expect("c2s");
    assert!(c2s.contiguous().starts_with(req), "the first copy is kept");
    let cls = conn.classify();
    assert_eq!(cls.protocol, crate::classify::Protocol::Http1);
    assert_eq!(cls.confidence, crate::classify::Confidence::Low);
    assert!(
        cls.evidence.contains("overlapping TCP segment"),
        "{}",
        cls.evidence
    );
    assert_eq!(conn.overlaps().0.segments, 1);
}

#[test]
fn captures_that_differ_use_the_receivers_bytes() {
    let mut t = FlowTable::new(FlowConfig::default(), None);
    let c = ([10, 213, 0, 2], 40001);
    let s = ([10, 213, 0, 1], 8080);
    open_pair(&mut t, c, s);
    // The client's socket sent one thing; the server's kernel received another
    // (injected on the path), longer or not.
    let sent = b"\x16\x03\x01\x00\x10 a client hello";
    let received = b"GET / HTTP/1.1\r\n";
    t.on_event(Event::Data(data(1, direction::EGRESS, 0, sent), sent));
    t.on_event(Event::Data(
        data(2, direction::INGRESS, 0, received),
        received,
    ));
    let conn = t.conns.iter().next().map(|(_, c)| c).expect("connection");
    assert_eq!(
        conn.client_to_server().map(Stream::contiguous),
        Some(&received[..])
    );
    let (c2s, s2c) = conn.overlaps();
    assert!(c2s.captures_differ && !s2c.any());
    let cls = conn.classify();
    assert_eq!(cls.confidence, crate::classify::Confidence::Low);
    assert!(
        cls.evidence.contains("as sent and as received differ"),
        "{}",
        cls.evidence
    );
}

#[test]
fn tables_give_back_their_room_after_a_burst() {
    let mut t = FlowTable::new(FlowConfig::default(), None);
    let n = 20_000u64;
    for i in 0..n {
        let port = 10_000 + (i % 50_000) as u16;
        let ip = [10, 0, (i >> 8) as u8, i as u8];
        let est = conn_event(
            kind::ESTABLISHED,
            i + 1,
            role::CLIENT,
            (ip, port),
            ([10, 1, 0, 1], 80),
        );
        t.on_event(Event::Conn(ConnKind::Established, est));
    }
    assert!(
        !t.shrink(),
        "nothing to give back while the connections are open"
    );
    for i in 0..n {
        let port = 10_000 + (i % 50_000) as u16;
        let ip = [10, 0, (i >> 8) as u8, i as u8];
        let close = conn_event(
            kind::CLOSED,
            i + 1,
            role::CLIENT,
            (ip, port),
            ([10, 1, 0, 1], 80),
        );
        t.on_event(Event::Conn(ConnKind::Closed, close));
    }
    let mut emitted = 0;
    t.tick(u64::MAX, &mut |_| emitted += 1);
    assert_eq!(emitted, n);
    assert!(t.shrink(), "the burst's room is given back");
    assert!(!t.shrink(), "once");
}
