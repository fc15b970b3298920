//! Wire structs, map names and constants shared by the kernel programs
//! (`agent-ebpf`) and the userspace agent.
//!
//! Every struct that crosses the kernel/user boundary is `#[repr(C)]`, made of
//! fixed-width integers with explicit padding, and has its size asserted at
//! compile time right beside it. Event kinds travel as `u32`; userspace decodes
//! them with `TryFrom`.
#![no_std]

/// Map names, defined once and used by both sides.
pub mod maps {
    /// Ring buffer carrying every event to userspace.
    pub const EVENTS: &str = "MTLS_EVENTS";
    /// Per-CPU array of `u64` counters, indexed by [`crate::stats::Stat`].
    pub const STATS: &str = "MTLS_STATS";
    /// `BPF_MAP_TYPE_SK_STORAGE` holding a [`crate::SockState`] per TCP socket.
    pub const SOCKS: &str = "MTLS_SOCKS";
    /// Per-CPU scratch buffer used to assemble a data event before output.
    pub const SCRATCH: &str = "MTLS_SCRATCH";
    /// Socket cookies userspace has finished with: no more bytes wanted.
    pub const DECIDED: &str = "MTLS_DECIDED";
}

/// Program names (the Rust function names in `agent-ebpf`).
pub mod programs {
    pub const CAPTURE_EGRESS: &str = "mtls_capture_egress";
    pub const CAPTURE_INGRESS: &str = "mtls_capture_ingress";
    pub const SOCK_OPS: &str = "mtls_sock_ops";
    /// `cgroup/sock_create`: the owner of every TCP socket, in process context.
    pub const SOCK_CREATE: &str = "mtls_sock_create";
    /// `cgroup/getsockopt`: what a proxy learns with `SO_ORIGINAL_DST`.
    pub const GETSOCKOPT: &str = "mtls_getsockopt";
    pub const ALL: [&str; 5] = [
        SOCK_CREATE,
        SOCK_OPS,
        CAPTURE_EGRESS,
        CAPTURE_INGRESS,
        GETSOCKOPT,
    ];
}

/// Read-only globals patched by the loader (`EbpfLoader::set_global`).
pub mod globals {
    /// Bytes of each direction captured per connection (`u32`).
    pub const CAPTURE_BUDGET: &str = "MTLS_CAPTURE_BUDGET";
    /// Ring-buffer fill level (bytes) above which a producer wakes the reader (`u64`).
    pub const WAKEUP_BYTES: &str = "MTLS_WAKEUP_BYTES";
}

/// Largest payload a single data event carries. A packet whose in-budget part is
/// larger is cut here and counted as [`stats::Stat::TruncatedPackets`].
pub const MAX_CHUNK: usize = 16 * 1024;
/// Default capture budget per direction.
pub const DEFAULT_CAPTURE_BUDGET: u32 = 8 * 1024;
/// Largest accepted capture budget per direction.
pub const MAX_CAPTURE_BUDGET: u32 = 256 * 1024;
/// Default ring buffer size (must be a power of two multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 16 * 1024 * 1024;
/// Entries of the decided-cookies map.
pub const DECIDED_ENTRIES: u32 = 65_536;

/// Event kinds (the first `u32` of every event).
pub mod kind {
    /// A connection became established (sock_ops active/passive), [`crate::ConnEvent`]
    /// stamped with the time of establishment. Sent when the socket first carries
    /// payload (usually as [`ESTABLISHED_DATA`]), is asked for its original
    /// destination, or closes; at once when its SYN was translated.
    pub const ESTABLISHED: u32 = 1;
    /// Payload bytes of one direction, [`crate::DataHeader`] followed by the bytes.
    pub const DATA: u32 = 2;
    /// A connection closed, [`crate::ConnEvent`] with byte counts.
    pub const CLOSED: u32 = 3;
    /// A socket started listening (process context), [`crate::ConnEvent`].
    pub const LISTEN: u32 = 4;
    /// A connection established before the probes attached was seen, [`crate::ConnEvent`].
    pub const PREEXISTING: u32 = 5;
    /// A process asked a socket for its pre-NAT destination (`SO_ORIGINAL_DST`):
    /// it intercepts traffic. [`crate::OrigDstEvent`].
    pub const ORIGINAL_DST: u32 = 6;
    /// A connect()ing socket's first packet (its SYN, after netfilter's OUTPUT and
    /// POSTROUTING) carries other addresses than the socket names: DNAT, SNAT or
    /// REDIRECT. [`crate::ConnEvent`] with the packet's addresses as local/remote.
    pub const NAT: u32 = 7;
    /// A connect()ing socket closed without ever being established (SYN_SENT ->
    /// CLOSE): refused when [`crate::sock_flags::RESET`] is set (a RST answered the
    /// SYN), else unanswered or abandoned. [`crate::ConnEvent`], role client.
    pub const ATTEMPT: u32 = 8;
    /// A socket's deferred announcement and its first payload in one record: a
    /// [`crate::ConnEvent`] as for [`ESTABLISHED`] (this kind in its header), then a
    /// [`DATA`] record ([`crate::DataHeader`] and its bytes).
    pub const ESTABLISHED_DATA: u32 = 9;
}

/// Which way the bytes went, seen from the socket that carried them.
pub mod direction {
    /// Sent by this socket.
    pub const EGRESS: u8 = 0;
    /// Received by this socket.
    pub const INGRESS: u8 = 1;
}

/// Role of a socket in its connection.
pub mod role {
    pub const UNKNOWN: u16 = 0;
    /// It called connect().
    pub const CLIENT: u16 = 1;
    /// It was accepted from a listener.
    pub const SERVER: u16 = 2;
}

/// Address families as the kernel spells them.
pub mod family {
    pub const INET: u16 = 2;
    pub const INET6: u16 = 10;
}

/// TCP header flag bits as they appear in byte 13 of the header.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// Bits of [`SockState::flags`].
pub mod sock_flags {
    /// `egress_base` holds the sequence number of the first byte we send.
    pub const EGRESS_BASE: u32 = 1 << 0;
    /// `ingress_base` holds the sequence number of the first byte we receive.
    pub const INGRESS_BASE: u32 = 1 << 1;
    /// The egress budget is used up.
    pub const EGRESS_DONE: u32 = 1 << 2;
    /// The ingress budget is used up.
    pub const INGRESS_DONE: u32 = 1 << 3;
    /// Userspace has decided; nothing more is captured.
    pub const DECIDED: u32 = 1 << 4;
    /// The connection existed before the probes attached.
    pub const PREEXISTING: u32 = 1 << 5;
    /// sock_ops saw this connection become established.
    pub const ESTABLISHED: u32 = 1 << 6;
    /// `pid`/`tgid`/`comm` were recorded in process context.
    pub const PROCESS: u32 = 1 << 7;
    /// A capture event of this socket was lost (ring buffer full).
    pub const LOST: u32 = 1 << 8;
    /// This socket sent a FIN (entered FIN_WAIT1 or LAST_ACK).
    pub const FIN_SENT: u32 = 1 << 11;
    /// This socket received a FIN (entered CLOSE_WAIT, CLOSING or TIME_WAIT, or
    /// closed from FIN_WAIT2).
    pub const FIN_RECEIVED: u32 = 1 << 12;
    /// `cookie` is set.
    pub const COOKIE: u32 = 1 << 13;
    /// This socket closed first (went ESTABLISHED -> FIN_WAIT1).
    pub const CLOSED_FIRST: u32 = 1 << 15;
    /// The peer closed first (this socket went ESTABLISHED -> CLOSE_WAIT).
    pub const PEER_CLOSED_FIRST: u32 = 1 << 16;
    /// The connection was reset or aborted (CLOSE straight from ESTABLISHED,
    /// CLOSE_WAIT or FIN_WAIT1), or a RST answered its SYN (a refused attempt).
    pub const RESET: u32 = 1 << 17;
    /// The close of a socket older than the probes (seen from its FINs or a RST in
    /// the capture programs, since no state callback was armed for it) was reported.
    pub const CLOSE_REPORTED: u32 = 1 << 18;
    /// `cgroup_id` is set.
    pub const CGROUP: u32 = 1 << 14;
    /// Established, not yet announced: the ESTABLISHED event (with `est_ns`) goes
    /// out when the socket first carries payload, a FIN or a RST, is asked for its
    /// original destination, or closes. An idle connection costs userspace nothing.
    pub const ANNOUNCE_PENDING: u32 = 1 << 19;
    /// Established by this socket's own connect() (the client end).
    pub const ACTIVE: u32 = 1 << 20;
    /// This socket's SYN left with other addresses than the socket's (a NAT event
    /// was sent): it is announced at establishment, so the agent need not keep the
    /// translated addresses waiting.
    pub const NAT: u32 = 1 << 21;
    /// Egress was captured from the middle of the stream.
    pub const EGRESS_MIDSTREAM: u32 = 1 << 9;
    /// Ingress was captured from the middle of the stream.
    pub const INGRESS_MIDSTREAM: u32 = 1 << 10;
    /// Both budgets used up or decided: packets cost one lookup.
    pub const DONE: u32 = EGRESS_DONE | INGRESS_DONE;
}

/// Bits of [`DataHeader::flags`].
pub mod data_flags {
    /// `pid`/`tgid`/`comm` name the task that sent this segment (egress, the task's
    /// cgroup equals the socket's).
    pub const PROCESS: u8 = 1 << 0;
    /// The segment's payload went past the chunk size and was cut.
    pub const TRUNCATED: u8 = 1 << 1;
    /// The stream offset is relative to the first segment seen, not to the SYN.
    pub const MIDSTREAM: u8 = 1 << 2;
}

/// Per-socket state kept in `BPF_MAP_TYPE_SK_STORAGE` and freed with the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockState {
    /// TCP sequence number of the first payload byte sent.
    pub egress_base: u32,
    /// TCP sequence number of the first payload byte received.
    pub ingress_base: u32,
    /// Stream offset up to which egress bytes have been sent up.
    pub egress_hw: u32,
    /// Stream offset up to which ingress bytes have been sent up.
    pub ingress_hw: u32,
    /// [`sock_flags`] bits.
    pub flags: u32,
    pub pid: u32,
    pub tgid: u32,
    /// uid of the process that connected, or sent the first egress segment
    /// (valid with [`sock_flags::PROCESS`]).
    pub uid: u32,
    /// `bpf_get_socket_cookie`, cached so the per-packet path needs no helper call.
    pub cookie: u64,
    /// cgroup v2 id of the socket (`bpf_skb_cgroup_id`) or of the connecting task.
    pub cgroup_id: u64,
    pub comm: [u8; 16],
    /// `bpf_ktime_get_ns` at establishment: the timestamp of a deferred
    /// ESTABLISHED event ([`sock_flags::ANNOUNCE_PENDING`]).
    pub est_ns: u64,
    /// Network namespace cookie, taken at establishment.
    pub netns_cookie: u64,
}
const _: () = assert!(core::mem::size_of::<SockState>() == 80);
// The kernel programs copy command names with 8-byte moves (agent-ebpf `mem`).
const _: () = assert!(core::mem::offset_of!(SockState, comm) % 8 == 0);

/// Common first fields of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    pub _pad0: u32,
    /// `bpf_get_socket_cookie` of the socket.
    pub cookie: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the event was made.
    pub ts_ns: u64,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 24);

/// Lifecycle event: established, closed, listen, pre-existing.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnEvent {
    pub hdr: EventHeader,
    /// Network namespace cookie (0 where the hook cannot tell).
    pub netns_cookie: u64,
    /// cgroup v2 id of the socket (or of the task in process context).
    pub cgroup_id: u64,
    /// Payload bytes sent and acknowledged (CLOSED from sock_ops; SYN and FIN
    /// excluded).
    pub bytes_sent: u64,
    /// Payload bytes received (CLOSED from sock_ops; FIN excluded).
    pub bytes_received: u64,
    /// Local address: IPv4 in the first 4 bytes, or IPv6; network order.
    pub local_addr: [u8; 16],
    /// Remote address, same encoding.
    pub remote_addr: [u8; 16],
    /// Host order.
    pub local_port: u16,
    /// Host order.
    pub remote_port: u16,
    /// [`family`].
    pub family: u16,
    /// [`role`].
    pub role: u16,
    pub pid: u32,
    pub tgid: u32,
    pub comm: [u8; 16],
    /// Sequence number of the first payload byte sent (ESTABLISHED).
    pub egress_base: u32,
    /// Sequence number of the first payload byte received (ESTABLISHED).
    pub ingress_base: u32,
    /// [`sock_flags`] of the socket when the event was made.
    pub sock_flags: u32,
    /// uid of the process (valid when `tgid` is set).
    pub uid: u32,
}
const _: () = assert!(core::mem::size_of::<ConnEvent>() == 136);
const _: () = assert!(core::mem::offset_of!(ConnEvent, comm) % 8 == 0);

/// What `getsockopt(SOL_IP, SO_ORIGINAL_DST)` (or `SOL_IPV6`,
/// `IP6T_SO_ORIGINAL_DST`) told a process about one of its sockets.
///
/// Proxies that capture traffic with iptables `REDIRECT` (Istio's sidecar, ztunnel,
/// Linkerd's proxy) ask it of every connection they accept: the socket is the
/// accepting end of an intercepted connection and `original_*` is where its client
/// meant to go. A failed call (`result` < 0: no NAT entry, e.g. TPROXY) still
/// names the caller as an interceptor.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OrigDstEvent {
    /// `cookie` is the socket's, from its storage (0 when it has none).
    pub hdr: EventHeader,
    /// Network namespace cookie of the socket.
    pub netns_cookie: u64,
    /// cgroup v2 id of the calling task.
    pub cgroup_id: u64,
    /// The socket's own addresses (same encoding as [`ConnEvent`]).
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// The pre-NAT destination the call returned (zero when it failed).
    pub original_addr: [u8; 16],
    /// Host order.
    pub local_port: u16,
    pub remote_port: u16,
    pub original_port: u16,
    /// [`family`] of the socket.
    pub family: u16,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; 16],
    /// The kernel's return value of the call (0 on success, a negative errno).
    pub result: i32,
    /// [`family`] of `original_addr` (0 when the call failed).
    pub original_family: u16,
    pub _pad0: u16,
}
const _: () = assert!(core::mem::size_of::<OrigDstEvent>() == 136);
const _: () = assert!(core::mem::offset_of!(OrigDstEvent, comm) % 8 == 0);

/// Header of a data event; `len` payload bytes follow it in the same record.
///
/// `pid`/`tgid`/`comm` are filled only in the first egress event sent from the
/// socket owner's system call ([`data_flags::PROCESS`]); `cgroup_id` once known.
/// A RST without payload is sent as an event with `len == 0`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataHeader {
    pub hdr: EventHeader,
    /// cgroup v2 id of the socket.
    pub cgroup_id: u64,
    /// Stream offset of the first payload byte (0 = first byte after the SYN).
    pub offset: u32,
    /// Payload bytes following this header.
    pub len: u32,
    /// Payload bytes the segment carried in all.
    pub seg_len: u32,
    /// [`direction`].
    pub direction: u8,
    /// TCP flags byte of the segment ([`tcp_flags`]).
    pub tcp_flags: u8,
    /// [`data_flags`].
    pub flags: u8,
    pub _pad0: u8,
    pub pid: u32,
    pub tgid: u32,
    pub comm: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<DataHeader>() == 72);
// pid and tgid are zeroed as one 8-byte word, comm as two.
const _: () = assert!(core::mem::offset_of!(DataHeader, pid) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(DataHeader, comm) % 8 == 0);

/// A data event as assembled in the per-CPU scratch buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    pub header: DataHeader,
    pub payload: [u8; MAX_CHUNK],
}
const _: () = assert!(core::mem::size_of::<DataEvent>() == 72 + MAX_CHUNK);

/// The per-CPU scratch buffer: a data event, preceded by room for the ESTABLISHED
/// event that a [`kind::ESTABLISHED_DATA`] record puts in front of it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Scratch {
    pub conn: ConnEvent,
    pub data: DataEvent,
}
const _: () = assert!(core::mem::size_of::<Scratch>() == 136 + 72 + MAX_CHUNK);

/// Kernel-side counters, one slot each in the per-CPU stats map.
pub mod stats {
    macro_rules! stats {
        ($($(#[$doc:meta])* $name:ident = $idx:expr, $label:expr;)*) => {
            /// Index of a counter in the stats map.
            #[derive(Clone, Copy, Debug, PartialEq, Eq)]
            #[repr(u32)]
            pub enum Stat { $($(#[$doc])* $name = $idx,)* }
            /// Every counter, in index order.
            pub const ALL: &[Stat] = &[$(Stat::$name,)*];
            impl Stat {
                /// Label used in logs and metrics.
                pub const fn name(self) -> &'static str {
                    match self { $(Stat::$name => $label,)* }
                }
            }
        };
    }
    stats! {
        /// Data events written to the ring buffer.
        DataEvents = 0, "data_events";
        /// Payload bytes written to the ring buffer.
        CapturedBytes = 1, "captured_bytes";
        /// Ring-buffer output failed (full): event lost.
        RingbufFull = 2, "ringbuf_full";
        /// Segments cut at the chunk size (a segment cut at the budget sets the
        /// record's `TRUNCATED` flag; the direction then counts in
        /// `budget_exhausted`).
        TruncatedPackets = 3, "truncated_packets";
        /// Directions whose capture budget was used up.
        BudgetExhausted = 4, "budget_exhausted";
        /// Socket storage could not be created.
        StorageFailed = 5, "storage_failed";
        /// `bpf_skb_load_bytes` failed.
        LoadFailed = 6, "load_failed";
        /// IP/TCP header did not parse (IPv6 extension headers, short packet).
        HeaderUnparsed = 7, "header_unparsed";
        /// Retransmitted segments already captured, skipped.
        Retransmits = 8, "retransmits_skipped";
        /// `bpf_sock_ops_cb_flags_set` failed.
        CbFlagsFailed = 9, "cb_flags_failed";
        /// Connections first seen mid-stream (older than the probes).
        Preexisting = 10, "preexisting";
        /// Lifecycle events written.
        ConnEvents = 11, "conn_events";
        /// Sockets marked decided by userspace.
        Decided = 12, "decided";
        /// Segments that arrived before their socket was established.
        NoBase = 13, "no_base";
        /// A map update or delete failed (the decided mark of a socket).
        MapUpdateFailed = 14, "map_update_failed";
        /// `SO_ORIGINAL_DST` answers reported (interceptions seen).
        OrigDstEvents = 15, "original_dst_events";
        /// Connections whose SYN left with other addresses than the socket's (NAT).
        NatEvents = 16, "nat_events";
        /// Established sockets whose announcement was deferred until they carry
        /// bytes or close ([`super::sock_flags::ANNOUNCE_PENDING`]).
        AnnounceDeferred = 17, "announce_deferred";
        /// Deferred announcements made (the socket spoke, was asked for its
        /// original destination, or closed). `AnnounceDeferred` less this is the
        /// number of idle sockets held in socket storage only.
        AnnounceMade = 18, "announce_made";
    }
    /// Number of slots in the stats map.
    pub const LEN: u32 = 19;
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: plain `#[repr(C)]` structs of integers and byte arrays with explicit
    // padding; every bit pattern is valid.
    unsafe impl aya::Pod for SockState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DataHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for OrigDstEvent {}
}
