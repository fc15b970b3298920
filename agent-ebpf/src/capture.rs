//! cgroup_skb ingress/egress: the capture budget.
//!
//! Every packet's IP and TCP headers are read in place (direct packet access).
//! A packet without payload returns there, before the storage lookup, unless it
//! carries a RST or a FIN or is a connect's SYN going out. Past that, a packet of a
//! socket whose budget is used up (or that userspace has decided) costs one
//! socket-storage lookup. Inside the budget the in-budget part of the payload is
//! copied to a per-CPU scratch event and output with its stream offset. On
//! loopback the receiving side sends no data: the sender's egress already carried
//! the same bytes. Its payload only announces the receiving socket, if that is
//! still pending (see `announce`).

use core::{ffi::c_void, mem::size_of, ptr};

use agent_common::{
    ConnEvent, DataHeader, MAX_CHUNK, SockState, data_flags, direction, kind, role, sock_flags,
    stats::Stat, tcp_flags,
};
use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, bpf_sock},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_ringbuf_output,
            bpf_sk_fullsock, bpf_skb_cgroup_id, bpf_skb_load_bytes,
        },
    },
    macros::cgroup_skb,
    programs::SkBuffContext,
};

use crate::{
    announce::{announce, fill_announcement, sock_event},
    maps::{
        MTLS_DECIDED, MTLS_EVENTS, MTLS_SCRATCH, bump, capture_budget, ring_ptr, sock_state,
        wakeup_flags,
    },
    mem,
};

const IPPROTO_TCP: u32 = 6;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const LOOPBACK_IFINDEX: u32 = 1;
/// `ENOENT`, as the map helpers return it (negated).
const ENOENT: i32 = 2;
const DATA_HEADER_LEN: u32 = size_of::<DataHeader>() as u32;
const CONN_EVENT_LEN: u32 = size_of::<ConnEvent>() as u32;

// TCP states (include/net/tcp_states.h) in which a socket without our storage must
// predate the probes.
const TCP_ESTABLISHED: u32 = 1;
const TCP_FIN_WAIT1: u32 = 4;
const TCP_FIN_WAIT2: u32 = 5;
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LAST_ACK: u32 = 9;
const TCP_CLOSING: u32 = 11;

#[cgroup_skb(egress)]
pub fn mtls_capture_egress(ctx: SkBuffContext) -> i32 {
    if let Err(stat) = try_capture(&ctx, direction::EGRESS) {
        bump(stat, 1);
    }
    // Never drop: we only watch.
    1
}

#[cgroup_skb(ingress)]
pub fn mtls_capture_ingress(ctx: SkBuffContext) -> i32 {
    if let Err(stat) = try_capture(&ctx, direction::INGRESS) {
        bump(stat, 1);
    }
    1
}

/// Where the payload starts and what the TCP header says.
struct Segment {
    ip_len: u32,
    hdr_len: u32,
    seq: u32,
    flags: u8,
}

/// Reads the IP and TCP headers, in place when they are in the linear area (always
/// for locally built packets), through `bpf_skb_load_bytes` otherwise.
#[inline(always)]
fn parse_headers(ctx: &SkBuffContext, skb: *mut __sk_buff) -> Result<Option<Segment>, Stat> {
    // SAFETY: context field reads.
    let (data, data_end, proto) = unsafe {
        (
            (*skb).data as usize,
            (*skb).data_end as usize,
            u16::from_be((*skb).protocol as u16),
        )
    };
    let ip_len: usize = if proto == ETH_P_IP {
        // An IPv4 header has at least 20 bytes. (A one-byte check would be folded into
        // `data >= data_end`, which the verifier cannot use.)
        if data + 20 > data_end {
            return parse_headers_slow(ctx, 0, proto);
        }
        // SAFETY: bounds checked against data_end just above.
        usize::from(unsafe { *(data as *const u8) } & 0x0f) * 4
    } else if proto == ETH_P_IPV6 {
        if data + 40 > data_end {
            return parse_headers_slow(ctx, 40, proto);
        }
        // SAFETY: bounds checked above.
        if unsafe { *((data + 6) as *const u8) } != 6 {
            return Err(Stat::HeaderUnparsed);
        }
        40
    } else {
        return Ok(None);
    };
    if ip_len < 20 {
        return Err(Stat::HeaderUnparsed);
    }
    let tcp = data + ip_len;
    if tcp + 20 > data_end {
        return parse_headers_slow(ctx, ip_len as u32, proto);
    }
    // SAFETY: the 20-byte TCP header is inside [data, data_end), checked above.
    let (seq, doff, flags) = unsafe {
        (
            u32::from_be(ptr::read_unaligned((tcp + 4) as *const u32)),
            *((tcp + 12) as *const u8),
            *((tcp + 13) as *const u8),
        )
    };
    Ok(Some(Segment {
        ip_len: ip_len as u32,
        hdr_len: ip_len as u32 + u32::from(doff >> 4) * 4,
        seq,
        flags,
    }))
}

#[inline(never)]
fn parse_headers_slow(
    ctx: &SkBuffContext,
    ip_len: u32,
    proto: u16,
) -> Result<Option<Segment>, Stat> {
    let ip_len = if proto == ETH_P_IP {
        let vihl: u8 = ctx.load(0).map_err(|_| Stat::HeaderUnparsed)?;
        u32::from(vihl & 0x0f) * 4
    } else {
        let next: u8 = ctx.load(6).map_err(|_| Stat::HeaderUnparsed)?;
        if next != 6 {
            return Err(Stat::HeaderUnparsed);
        }
        ip_len
    };
    if !(20..=60).contains(&ip_len) {
        return Err(Stat::HeaderUnparsed);
    }
    let off = ip_len as usize;
    let seq: u32 = ctx.load(off + 4).map_err(|_| Stat::HeaderUnparsed)?;
    let doff: u8 = ctx.load(off + 12).map_err(|_| Stat::HeaderUnparsed)?;
    let flags: u8 = ctx.load(off + 13).map_err(|_| Stat::HeaderUnparsed)?;
    Ok(Some(Segment {
        ip_len,
        hdr_len: ip_len + u32::from(doff >> 4) * 4,
        seq: u32::from_be(seq),
        flags,
    }))
}

#[inline(always)]
fn try_capture(ctx: &SkBuffContext, dir: u8) -> Result<(), Stat> {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: ctx is the kernel's __sk_buff; `sk` is a context field.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return Ok(());
    }
    // SAFETY: sk came from the context.
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return Ok(());
    }
    // SAFETY: full socket checked non-null above.
    if unsafe { (*sk).protocol } != IPPROTO_TCP {
        return Ok(());
    }

    let Some(seg) = parse_headers(ctx, skb)? else {
        return Ok(());
    };
    // SAFETY: context field read.
    let skb_len = unsafe { (*skb).len };
    if skb_len < seg.hdr_len {
        return Err(Stat::HeaderUnparsed);
    }
    let seg_len = skb_len - seg.hdr_len;
    // SAFETY: context field read.
    let loopback_in =
        dir == direction::INGRESS && unsafe { (*skb).ingress_ifindex } == LOOPBACK_IFINDEX;
    // A packet without payload returns before the storage lookup unless it carries
    // a RST (a refused connect), a FIN (the close of a socket older than the
    // probes) or is a connect's SYN on its way out (where it really goes).
    let syn_out =
        dir == direction::EGRESS && seg.flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    if seg_len == 0 && seg.flags & (tcp_flags::RST | tcp_flags::FIN) == 0 && !syn_out {
        return Ok(());
    }
    // SAFETY: `sk` is a full socket.
    let mut st = unsafe { sock_state(sk.cast(), false) };
    if st.is_null() {
        st = adopt_preexisting(ctx, sk)?;
        if st.is_null() {
            return Ok(());
        }
    }
    // SAFETY: non-null storage pointer from bpf_sk_storage_get.
    let state = unsafe { &mut *st };
    if state.flags & (sock_flags::PREEXISTING | sock_flags::CLOSE_REPORTED)
        == sock_flags::PREEXISTING
    {
        preexisting_close(ctx, sk, state, dir)?;
    }
    let (done_bit, base_bit, midstream_bit) = if dir == direction::EGRESS {
        (
            sock_flags::EGRESS_DONE,
            sock_flags::EGRESS_BASE,
            sock_flags::EGRESS_MIDSTREAM,
        )
    } else {
        (
            sock_flags::INGRESS_DONE,
            sock_flags::INGRESS_BASE,
            sock_flags::INGRESS_MIDSTREAM,
        )
    };
    if state.flags & (done_bit | sock_flags::DECIDED) != 0 {
        return Ok(());
    }
    if state.flags & sock_flags::CGROUP == 0 {
        // SAFETY: skb is the context.
        state.cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
        state.flags |= sock_flags::CGROUP;
    }

    // The first payload of a socket established quietly: the agent hears of the
    // connection now, in front of this segment's DATA record (or alone, where no
    // record follows).
    let announcing = seg_len > 0 && state.flags & sock_flags::ANNOUNCE_PENDING != 0;
    if seg.flags & tcp_flags::RST != 0 && state.flags & sock_flags::ESTABLISHED == 0 {
        // A RST before establishment: for a connecting socket, its SYN was refused
        // (the ATTEMPT event of sock_ops says so).
        state.flags |= sock_flags::RESET;
    }
    if syn_out {
        // A connect()ing socket's SYN, past netfilter: where it really goes.
        if state.flags & sock_flags::COOKIE == 0 {
            // SAFETY: cookie of the skb's socket.
            state.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            state.flags |= sock_flags::COOKIE;
        }
        if nat_check(ctx, sk, state.cookie, seg.ip_len)? {
            state.flags |= sock_flags::NAT;
        }
    }
    if seg_len == 0 && seg.flags & tcp_flags::RST == 0 {
        // ACKs and FINs: the close event says which side sent a FIN.
        return Ok(());
    }
    if loopback_in {
        // The sending socket is on this host and its egress carried these bytes.
        if announcing {
            announce(sk, state)?;
        }
        return Ok(());
    }

    let mut data_flags = 0u8;
    let base = if state.flags & base_bit != 0 {
        if dir == direction::EGRESS {
            state.egress_base
        } else {
            state.ingress_base
        }
    } else {
        if seg_len == 0 {
            // A bare RST of a stream we never saw data of: nothing to anchor.
            return Err(Stat::NoBase);
        }
        // First bytes of a stream we did not see start (older than the probes, or
        // data before establishment such as TCP Fast Open): anchor here.
        if dir == direction::EGRESS {
            state.egress_base = seg.seq;
        } else {
            state.ingress_base = seg.seq;
        }
        state.flags |= base_bit | midstream_bit;
        seg.seq
    };
    if state.flags & midstream_bit != 0 {
        data_flags |= data_flags::MIDSTREAM;
    }
    let offset = seg.seq.wrapping_sub(base);
    let budget = capture_budget();
    if offset >= budget {
        state.flags |= done_bit;
        bump(Stat::BudgetExhausted, 1);
        if announcing {
            announce(sk, state)?;
        }
        return Ok(());
    }
    let hw = if dir == direction::EGRESS {
        state.egress_hw
    } else {
        state.ingress_hw
    };
    if seg_len > 0 && offset + seg_len <= hw {
        bump(Stat::Retransmits, 1);
        if announcing {
            announce(sk, state)?;
        }
        return Ok(());
    }

    if state.flags & sock_flags::COOKIE == 0 {
        // SAFETY: cookie of the skb's socket.
        state.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        state.flags |= sock_flags::COOKIE;
    }
    let cookie = state.cookie;
    // Userspace decides after seeing the start of a stream, never before.
    if offset > 0 && MTLS_DECIDED.get_ptr(&cookie).is_some() {
        state.flags |= sock_flags::DECIDED;
        // The other direction may have taken the mark first (ENOENT): not a failure.
        if let Err(e) = MTLS_DECIDED.remove(&cookie)
            && e != -ENOENT
        {
            bump(Stat::MapUpdateFailed, 1);
        }
        bump(Stat::Decided, 1);
        if announcing {
            announce(sk, state)?;
        }
        return Ok(());
    }

    let mut len = seg_len;
    if len > budget - offset {
        len = budget - offset;
        data_flags |= data_flags::TRUNCATED;
    }
    if len > MAX_CHUNK as u32 {
        len = MAX_CHUNK as u32;
        data_flags |= data_flags::TRUNCATED;
        bump(Stat::TruncatedPackets, 1);
    }

    let scratch = MTLS_SCRATCH.get_ptr_mut(0).ok_or(Stat::LoadFailed)?;
    // SAFETY: per-CPU scratch slot, ours for the duration of the program.
    let scratch = unsafe { &mut *scratch };
    let event = &mut scratch.data;
    let h = &mut event.header;
    h.hdr.kind = kind::DATA;
    h.hdr.cookie = cookie;
    // SAFETY: plain helper call.
    h.hdr.ts_ns = unsafe { bpf_ktime_get_ns() };
    h.cgroup_id = state.cgroup_id;
    h.offset = offset;
    h.len = len;
    h.seg_len = seg_len;
    h.direction = dir;
    h.tcp_flags = seg.flags;
    // SAFETY: pid and tgid are one aligned word, comm two (asserted in
    // agent_common), inside the scratch slot.
    unsafe {
        mem::zero((&raw mut h.pid).cast::<u64>());
        mem::zero((&raw mut h.comm).cast::<[u64; 2]>());
    }
    if dir == direction::EGRESS && state.flags & sock_flags::PROCESS == 0 && seg_len > 0 {
        // Egress segments are usually sent from the owner's system call. Trust the
        // current task only when its cgroup is the socket's.
        let pid_tgid = bpf_get_current_pid_tgid();
        // SAFETY: plain helper call.
        if pid_tgid != 0 && unsafe { bpf_get_current_cgroup_id() } == state.cgroup_id {
            h.pid = pid_tgid as u32;
            h.tgid = (pid_tgid >> 32) as u32;
            // SAFETY: both are aligned command names, in the scratch slot and
            // the socket's storage.
            unsafe {
                mem::current_comm(&raw mut h.comm);
                mem::copy_comm(&raw mut state.comm, &raw const h.comm);
            }
            data_flags |= data_flags::PROCESS;
            state.pid = h.pid;
            state.tgid = h.tgid;
            state.uid = bpf_get_current_uid_gid() as u32;
            state.flags |= sock_flags::PROCESS;
        }
    }
    h.flags = data_flags;

    if len > 0 {
        // The compiler knows `len` is in 1..=MAX_CHUNK but may hand the helper a copy
        // the verifier cannot bound; make the check and the call use one opaque value.
        let n = core::hint::black_box(len);
        if n == 0 || n > MAX_CHUNK as u32 {
            return Err(Stat::LoadFailed);
        }
        // SAFETY: the destination is the scratch payload, `n` bytes fit in it.
        let ret = unsafe {
            bpf_skb_load_bytes(
                ctx.as_ptr(),
                seg.hdr_len,
                event.payload.as_mut_ptr().cast::<c_void>(),
                n,
            )
        };
        if ret != 0 {
            return Err(Stat::LoadFailed);
        }
    }
    let mut size = u64::from(DATA_HEADER_LEN + (len & (2 * MAX_CHUNK as u32 - 1)));
    let mut start = ptr::from_mut(event).cast::<c_void>();
    if announcing {
        // SAFETY: `sk` is a full socket.
        unsafe { fill_announcement(&mut scratch.conn, sk, state) };
        size += u64::from(CONN_EVENT_LEN);
        start = ptr::from_mut(scratch).cast::<c_void>();
    }
    // SAFETY: `start` is the data event in the scratch slot, or the slot's front
    // when the announcement goes in front of it; `size` does not pass its end.
    let ret = unsafe { bpf_ringbuf_output(ring_ptr(), start, size, wakeup_flags()) };
    if ret != 0 {
        // An announcement stays pending: the next segment tries again.
        state.flags |= sock_flags::LOST;
        return Err(Stat::RingbufFull);
    }
    if announcing {
        state.flags &= !sock_flags::ANNOUNCE_PENDING;
        bump(Stat::AnnounceMade, 1);
        bump(Stat::ConnEvents, 1);
    }
    bump(Stat::DataEvents, 1);
    bump(Stat::CapturedBytes, u64::from(len));
    let end = offset + len;
    if end > hw {
        if dir == direction::EGRESS {
            state.egress_hw = end;
        } else {
            state.ingress_hw = end;
        }
    }
    if end >= budget {
        state.flags |= done_bit;
        bump(Stat::BudgetExhausted, 1);
    }
    Ok(())
}

/// A TCP socket in an established-or-later state without our storage was set up
/// before the probes attached: give it storage and tell userspace once.
#[inline(always)]
fn adopt_preexisting(ctx: &SkBuffContext, sk: *mut bpf_sock) -> Result<*mut SockState, Stat> {
    // SAFETY: full socket.
    let tcp_state = unsafe { (*sk).state };
    if !matches!(
        tcp_state,
        TCP_ESTABLISHED
            | TCP_FIN_WAIT1
            | TCP_FIN_WAIT2
            | TCP_CLOSE_WAIT
            | TCP_LAST_ACK
            | TCP_CLOSING
    ) {
        return Ok(ptr::null_mut());
    }
    // SAFETY: full socket.
    let st = unsafe { sock_state(sk.cast(), true) };
    if st.is_null() {
        return Err(Stat::StorageFailed);
    }
    // SAFETY: non-null storage; context reads.
    let state = unsafe { &mut *st };
    state.flags |= sock_flags::PREEXISTING | sock_flags::COOKIE | sock_flags::CGROUP;
    // SAFETY: helpers on the context.
    unsafe {
        state.cookie = bpf_get_socket_cookie(ctx.as_ptr());
        state.cgroup_id = bpf_skb_cgroup_id(ctx.as_ptr().cast());
    }
    bump(Stat::Preexisting, 1);

    sock_event(kind::PREEXISTING, role::UNKNOWN, 0, sk, state)?;
    Ok(st)
}

/// The close of a socket older than the probes: no state callback was armed for it,
/// so its FINs (one each way) or a RST, seen here, give its CLOSED event, once.
#[inline(never)]
fn preexisting_close(
    ctx: &SkBuffContext,
    sk: *mut bpf_sock,
    state: &mut SockState,
    dir: u8,
) -> Result<(), Stat> {
    // SAFETY: context field read.
    let proto = u16::from_be(unsafe { (*ctx.as_ptr().cast::<__sk_buff>()).protocol } as u16);
    let ip_len = if proto == ETH_P_IP {
        let vihl: u8 = ctx.load(0).map_err(|_| Stat::HeaderUnparsed)?;
        usize::from(vihl & 0x0f) * 4
    } else if proto == ETH_P_IPV6 {
        40
    } else {
        return Ok(());
    };
    let flags: u8 = ctx.load(ip_len + 13).map_err(|_| Stat::HeaderUnparsed)?;
    if flags & tcp_flags::FIN != 0 {
        state.flags |= if dir == direction::EGRESS {
            sock_flags::FIN_SENT
        } else {
            sock_flags::FIN_RECEIVED
        };
    }
    if flags & tcp_flags::RST != 0 {
        state.flags |= sock_flags::RESET;
    }
    let both_fins = sock_flags::FIN_SENT | sock_flags::FIN_RECEIVED;
    if flags & tcp_flags::RST == 0 && state.flags & both_fins != both_fins {
        return Ok(());
    }
    state.flags |= sock_flags::CLOSE_REPORTED;
    sock_event(kind::CLOSED, role::UNKNOWN, 0, sk, state)
}

/// Reports a SYN whose addresses differ from its socket's: the connection was
/// translated (DNAT, SNAT, REDIRECT) on its way out. Runs once per connection.
/// Returns whether it was (and the NAT event sent).
#[inline(never)]
fn nat_check(
    ctx: &SkBuffContext,
    sk: *mut bpf_sock,
    cookie: u64,
    ip_len: u32,
) -> Result<bool, Stat> {
    // SAFETY: context field read.
    let proto = u16::from_be(unsafe { (*ctx.as_ptr().cast::<__sk_buff>()).protocol } as u16);
    let off = ip_len as usize;
    let sport: u16 = u16::from_be(ctx.load(off).map_err(|_| Stat::HeaderUnparsed)?);
    let dport: u16 = u16::from_be(ctx.load(off + 2).map_err(|_| Stat::HeaderUnparsed)?);
    // SAFETY: full socket from bpf_sk_fullsock.
    let s = unsafe { &*sk };
    let mut local = [0u8; 16];
    let mut remote = [0u8; 16];
    let (same, fam) = if proto == ETH_P_IP {
        let saddr: [u8; 4] = ctx.load(12).map_err(|_| Stat::HeaderUnparsed)?;
        let daddr: [u8; 4] = ctx.load(16).map_err(|_| Stat::HeaderUnparsed)?;
        local[..4].copy_from_slice(&saddr);
        remote[..4].copy_from_slice(&daddr);
        (
            saddr == s.src_ip4.to_ne_bytes() && daddr == s.dst_ip4.to_ne_bytes(),
            agent_common::family::INET,
        )
    } else {
        local = ctx.load(8).map_err(|_| Stat::HeaderUnparsed)?;
        remote = ctx.load(24).map_err(|_| Stat::HeaderUnparsed)?;
        let mut ss = [0u8; 16];
        let mut sd = [0u8; 16];
        copy_ip6(&mut ss, &s.src_ip6);
        copy_ip6(&mut sd, &s.dst_ip6);
        (local == ss && remote == sd, agent_common::family::INET6)
    };
    if same && sport == s.src_port as u16 && dport == u16::from_be(s.dst_port) {
        return Ok(false);
    }
    let Some(mut entry) = MTLS_EVENTS.reserve_untyped::<ConnEvent>(0) else {
        return Err(Stat::RingbufFull);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: reserved space of the right size, zeroed then filled.
    unsafe {
        mem::zero(ev);
        let e = &mut *ev;
        e.hdr.kind = kind::NAT;
        e.hdr.cookie = cookie;
        e.hdr.ts_ns = bpf_ktime_get_ns();
        e.family = fam;
        e.role = role::CLIENT;
        e.local_addr = local;
        e.remote_addr = remote;
        e.local_port = sport;
        e.remote_port = dport;
    }
    entry.submit(wakeup_flags());
    bump(Stat::NatEvents, 1);
    Ok(true)
}

/// Copies an IPv6 address kept as four network-order `u32` words.
#[inline(always)]
pub fn copy_ip6(dst: &mut [u8; 16], src: &[u32; 4]) {
    let mut i = 0;
    while i < 4 {
        let b = src[i].to_ne_bytes();
        dst[i * 4] = b[0];
        dst[i * 4 + 1] = b[1];
        dst[i * 4 + 2] = b[2];
        dst[i * 4 + 3] = b[3];
        i += 1;
    }
}
