//! sock_ops on the cgroup v2 root: connect, listen, connection established (active
//! and passive), connection attempts that fail, and close. Establishment records the
//! sequence bases that turn TCP sequence numbers into stream offsets; state
//! callbacks are asked for at connect (so a connect that never establishes is seen)
//! or at passive establishment, so the close carries the socket's byte counts.
//!
//! Establishment is recorded in the socket's storage and announced lazily (see
//! `announce`): the ESTABLISHED event goes out before the socket's first payload,
//! or here at close for a connection that never carried any. A socket whose state
//! callback could not be armed, or whose SYN was translated (NAT), is announced at
//! once.
//!
//! The socket's process facts were written into its storage by `sock_create`; the
//! events here copy them. Nothing here needs the current task, which for most of
//! these callbacks (softirq) is not the socket's owner anyway.

use agent_common::{ConnEvent, family, kind, role, sock_flags, stats::Stat};
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_SOCK_OPS_TCP_LISTEN_CB,
    },
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::sock_ops,
    programs::SockOpsContext,
};

use aya_log_ebpf::warn;

use crate::{
    announce::{role_of, stamp},
    capture::copy_ip6,
    maps::{MTLS_EVENTS, bump, sock_state, wakeup_flags},
    mem,
};

const TCP_ESTABLISHED: u32 = 1;
const TCP_SYN_SENT: u32 = 2;
const TCP_FIN_WAIT1: u32 = 4;
const TCP_FIN_WAIT2: u32 = 5;
const TCP_CLOSE: u32 = 7;
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LAST_ACK: u32 = 9;
const TCP_CLOSING: u32 = 11;

#[sock_ops]
pub fn mtls_sock_ops(ctx: SockOpsContext) -> u32 {
    if let Err(stat) = try_sock_ops(&ctx) {
        bump(stat, 1);
    }
    1
}

#[inline(always)]
fn try_sock_ops(ctx: &SockOpsContext) -> Result<(), Stat> {
    let op = ctx.op();
    match op {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB | BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            established(ctx, op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
        }
        BPF_SOCK_OPS_STATE_CB => state_change(ctx, ctx.arg(0), ctx.arg(1)),
        BPF_SOCK_OPS_TCP_CONNECT_CB => connect(ctx),
        BPF_SOCK_OPS_TCP_LISTEN_CB => listen(ctx),
        _ => Ok(()),
    }
}

/// Inside `connect()`, before the SYN: arm the state callback so that an attempt
/// that never establishes (refused, unanswered, abandoned) is reported.
#[inline(always)]
fn connect(ctx: &SockOpsContext) -> Result<(), Stat> {
    // SAFETY: context field.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return Ok(());
    }
    // Created here only for a socket made before the probes attached.
    // SAFETY: socket pointer from the sock_ops context.
    if unsafe { sock_state(sk.cast(), true) }.is_null() {
        return Err(Stat::StorageFailed);
    }
    arm_state_cb(ctx);
    Ok(())
}

/// Inside `listen()`: who listens on which port, so accepted sockets can be
/// attributed.
#[inline(always)]
fn listen(ctx: &SockOpsContext) -> Result<(), Stat> {
    // SAFETY: context field.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return Ok(());
    }
    // SAFETY: socket pointer from the sock_ops context.
    let st = unsafe { sock_state(sk.cast(), true) };
    if st.is_null() {
        return Err(Stat::StorageFailed);
    }
    // SAFETY: non-null storage.
    let state = unsafe { &mut *st };
    if state.flags & sock_flags::COOKIE == 0 {
        // SAFETY: helper on the sock_ops context.
        state.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        state.flags |= sock_flags::COOKIE;
    }
    emit(ctx, kind::LISTEN, role::UNKNOWN, 0, state)
}

/// Asks for state callbacks on this socket; whether they will come.
#[inline(always)]
fn arm_state_cb(ctx: &SockOpsContext) -> bool {
    let flags = ctx.cb_flags();
    if flags & BPF_SOCK_OPS_STATE_CB_FLAG != 0 {
        return true;
    }
    if let Err(err) = ctx.set_cb_flags(flags as i32 | BPF_SOCK_OPS_STATE_CB_FLAG as i32) {
        // Rare (the flag is supported since 4.16): the close of this connection
        // will come without byte counts.
        warn!(ctx, "bpf_sock_ops_cb_flags_set failed: {}", err);
        bump(Stat::CbFlagsFailed, 1);
        return false;
    }
    true
}

#[inline(always)]
fn established(ctx: &SockOpsContext, active: bool) -> Result<(), Stat> {
    let ops = ctx.ops;
    // SAFETY: context field.
    let sk = unsafe { (*ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return Ok(());
    }
    // SAFETY: socket pointer from the sock_ops context.
    let st = unsafe { sock_state(sk.cast(), true) };
    if st.is_null() {
        return Err(Stat::StorageFailed);
    }
    // SAFETY: non-null storage; context field reads.
    let state = unsafe { &mut *st };
    unsafe {
        state.egress_base = (*ops).snd_nxt;
        state.ingress_base = (*ops).rcv_nxt;
    }
    state.egress_hw = 0;
    state.ingress_hw = 0;
    // SAFETY: helpers on the sock_ops context.
    unsafe {
        state.cookie = bpf_get_socket_cookie(ctx.as_ptr());
        state.netns_cookie = bpf_get_netns_cookie(ctx.as_ptr());
        state.est_ns = bpf_ktime_get_ns();
    }
    state.flags |= sock_flags::EGRESS_BASE
        | sock_flags::INGRESS_BASE
        | sock_flags::ESTABLISHED
        | sock_flags::COOKIE;
    if active {
        state.flags |= sock_flags::ACTIVE;
    }

    if arm_state_cb(ctx) && state.flags & sock_flags::NAT == 0 {
        // The close is sure to come here: announce when the socket first speaks.
        state.flags |= sock_flags::ANNOUNCE_PENDING;
        bump(Stat::AnnounceDeferred, 1);
        return Ok(());
    }
    emit(ctx, kind::ESTABLISHED, role_of(state), state.est_ns, state)
}

/// Reports the close. Only the transition to CLOSE looks at the storage: what came
/// before it (which side sent a FIN, who closed first, whether it was reset)
/// follows from the state the socket closes from, see [`close_flags`].
#[inline(always)]
fn state_change(ctx: &SockOpsContext, old: u32, new: u32) -> Result<(), Stat> {
    if new != TCP_CLOSE {
        return Ok(());
    }
    let ops = ctx.ops;
    // SAFETY: context field.
    let sk = unsafe { (*ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return Ok(());
    }
    // SAFETY: socket pointer from the sock_ops context.
    let st = unsafe { sock_state(sk.cast(), false) };
    if st.is_null() {
        return Ok(());
    }
    // SAFETY: non-null storage.
    let state = unsafe { &mut *st };
    if old == TCP_SYN_SENT {
        // A connect that never established (SYN_SENT -> CLOSE): refused (a RST
        // came, noted by the capture program), unanswered or abandoned.
        return emit(ctx, kind::ATTEMPT, role::CLIENT, 0, state);
    }
    state.flags |= close_flags(old);
    if state.flags & sock_flags::ANNOUNCE_PENDING != 0 {
        // Closed without ever carrying payload: announced now, as it was.
        state.flags &= !sock_flags::ANNOUNCE_PENDING;
        bump(Stat::AnnounceMade, 1);
        emit(ctx, kind::ESTABLISHED, role_of(state), state.est_ns, state)?;
    }
    emit(ctx, kind::CLOSED, role::UNKNOWN, 0, state)
}

/// The close flags of a socket that goes to CLOSE from `old`. A socket only
/// reaches FIN_WAIT1 by sending its FIN first (from ESTABLISHED) and CLOSE_WAIT by
/// receiving the peer's first, so the state it leaves says it all:
///
/// | from | FIN sent | FIN received | closed first | reset |
/// | --- | --- | --- | --- | --- |
/// | ESTABLISHED | | | | yes |
/// | FIN_WAIT1 | yes | | we did | yes |
/// | FIN_WAIT2, CLOSING (through TIME_WAIT) | yes | yes | we did | |
/// | CLOSE_WAIT | | yes | the peer | yes |
/// | LAST_ACK | yes | yes | the peer | |
///
/// FIN_WAIT2 also closes when its timeout runs out without the peer's FIN; that
/// close is counted as one that received it, as it always was.
#[inline(always)]
fn close_flags(old: u32) -> u32 {
    use sock_flags::{CLOSED_FIRST, FIN_RECEIVED, FIN_SENT, PEER_CLOSED_FIRST, RESET};
    match old {
        TCP_ESTABLISHED => RESET,
        TCP_FIN_WAIT1 => FIN_SENT | CLOSED_FIRST | RESET,
        TCP_FIN_WAIT2 | TCP_CLOSING => FIN_SENT | CLOSED_FIRST | FIN_RECEIVED,
        TCP_CLOSE_WAIT => PEER_CLOSED_FIRST | FIN_RECEIVED | RESET,
        TCP_LAST_ACK => FIN_SENT | PEER_CLOSED_FIRST | FIN_RECEIVED,
        _ => 0,
    }
}

#[inline(always)]
fn emit(
    ctx: &SockOpsContext,
    event_kind: u32,
    event_role: u16,
    ts_ns: u64,
    state: &mut agent_common::SockState,
) -> Result<(), Stat> {
    let ops = ctx.ops;
    let Some(mut entry) = MTLS_EVENTS.reserve_untyped::<ConnEvent>(0) else {
        state.flags |= sock_flags::LOST;
        return Err(Stat::RingbufFull);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: reserved space of the right size, zeroed then filled; context reads.
    unsafe {
        mem::zero(ev);
        let e = &mut *ev;
        e.hdr.kind = event_kind;
        e.hdr.cookie = state.cookie;
        // 0: now. A deferred ESTABLISHED carries the time of establishment.
        e.hdr.ts_ns = stamp(ts_ns);
        e.netns_cookie = bpf_get_netns_cookie(ctx.as_ptr());
        e.family = (*ops).family as u16;
        e.role = event_role;
        e.local_port = (*ops).local_port as u16;
        // remote_port holds the port in network order in its upper 16 bits.
        e.remote_port = u16::from_be(((*ops).remote_port >> 16) as u16);
        if e.family == family::INET {
            e.local_addr[..4].copy_from_slice(&(*ops).local_ip4.to_ne_bytes());
            e.remote_addr[..4].copy_from_slice(&(*ops).remote_ip4.to_ne_bytes());
        } else {
            copy_ip6(&mut e.local_addr, &(*ops).local_ip6);
            copy_ip6(&mut e.remote_addr, &(*ops).remote_ip6);
        }
        if event_kind == kind::CLOSED {
            // Sequence arithmetic against the bases taken at establishment: exact
            // payload counts, without the SYN and FIN that the kernel's
            // bytes_acked/bytes_received include.
            let (snd_una, snd_nxt, rcv_nxt) = ((*ops).snd_una, (*ops).snd_nxt, (*ops).rcv_nxt);
            let mut sent = snd_una.wrapping_sub(state.egress_base);
            if state.flags & sock_flags::FIN_SENT != 0 && snd_una == snd_nxt && sent > 0 {
                sent -= 1;
            }
            let mut received = rcv_nxt.wrapping_sub(state.ingress_base);
            if state.flags & sock_flags::FIN_RECEIVED != 0 && received > 0 {
                received -= 1;
            }
            e.bytes_sent = u64::from(sent);
            e.bytes_received = u64::from(received);
        }
        e.egress_base = state.egress_base;
        e.ingress_base = state.ingress_base;
        e.sock_flags = state.flags;
        if state.flags & sock_flags::PROCESS != 0 {
            e.pid = state.pid;
            e.tgid = state.tgid;
            mem::copy_comm(&raw mut e.comm, &raw const state.comm);
            e.uid = state.uid;
        }
        if state.flags & sock_flags::CGROUP != 0 {
            e.cgroup_id = state.cgroup_id;
        }
    }
    entry.submit(wakeup_flags());
    bump(Stat::ConnEvents, 1);
    Ok(())
}
