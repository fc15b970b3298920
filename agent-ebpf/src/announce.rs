//! Lifecycle events built from a socket's storage and its `bpf_sock`, for the
//! programs that have no `bpf_sock_ops` to read the tuple from: the capture
//! programs and getsockopt.
//!
//! Establishment is announced lazily. `sock_ops` fills the storage when a
//! connection becomes established and marks it [`sock_flags::ANNOUNCE_PENDING`];
//! the ESTABLISHED event, stamped with the time of establishment, goes out when the
//! socket first carries payload (in front of its first DATA record, the two as one
//! `ESTABLISHED_DATA` record; alone where no data is sent up, as on loopback
//! ingress), when a proxy asks for its original destination, or at close (from
//! `sock_ops`). A connection that stays idle costs the agent nothing until it
//! speaks; the kernel keeps its facts in the socket's storage.

use core::ptr;

use agent_common::{ConnEvent, SockState, family, kind, role, sock_flags, stats::Stat};
use aya_ebpf::{bindings::bpf_sock, helpers::generated::bpf_ktime_get_ns};

use crate::{
    capture::copy_ip6,
    maps::{MTLS_EVENTS, bump, wakeup_flags},
    mem,
};

/// The role an ESTABLISHED event of this socket names.
#[inline(always)]
pub fn role_of(state: &SockState) -> u16 {
    if state.flags & sock_flags::ACTIVE != 0 {
        role::CLIENT
    } else {
        role::SERVER
    }
}

/// An event's timestamp: `ts_ns`, or now when it is 0.
#[inline(always)]
pub fn stamp(ts_ns: u64) -> u64 {
    if ts_ns != 0 {
        ts_ns
    } else {
        // SAFETY: plain helper call.
        unsafe { bpf_ktime_get_ns() }
    }
}

/// Sends the deferred ESTABLISHED event of `sk` if it has not gone out yet.
#[inline(always)]
pub fn announce(sk: *mut bpf_sock, state: &mut SockState) -> Result<(), Stat> {
    if state.flags & sock_flags::ANNOUNCE_PENDING == 0 {
        return Ok(());
    }
    if let Err(stat) = sock_event(kind::ESTABLISHED, role_of(state), state.est_ns, sk, state) {
        // Still pending: the next segment tries again.
        state.flags |= sock_flags::LOST;
        return Err(stat);
    }
    state.flags &= !sock_flags::ANNOUNCE_PENDING;
    bump(Stat::AnnounceMade, 1);
    Ok(())
}

/// A lifecycle event with the tuple read from `bpf_sock` and the rest from the
/// storage: process facts where known, no byte counts. `ts_ns` 0 means now.
#[inline(always)]
pub fn sock_event(
    event_kind: u32,
    event_role: u16,
    ts_ns: u64,
    sk: *mut bpf_sock,
    state: &SockState,
) -> Result<(), Stat> {
    let Some(mut entry) = MTLS_EVENTS.reserve_untyped::<ConnEvent>(0) else {
        return Err(Stat::RingbufFull);
    };
    // SAFETY: reserved space of the right size; `sk` is a full socket.
    unsafe {
        fill(
            &mut *entry.as_mut_ptr(),
            event_kind,
            event_role,
            ts_ns,
            sk,
            state,
        )
    };
    entry.submit(wakeup_flags());
    bump(Stat::ConnEvents, 1);
    Ok(())
}

/// The deferred ESTABLISHED event of `sk`, written into `e` (the front of the
/// scratch buffer) for a [`kind::ESTABLISHED_DATA`] record.
///
/// # Safety
/// `sk` must be a full socket.
#[inline(always)]
pub unsafe fn fill_announcement(e: &mut ConnEvent, sk: *mut bpf_sock, state: &SockState) {
    // SAFETY: per the contract.
    unsafe {
        fill(
            e,
            kind::ESTABLISHED_DATA,
            role_of(state),
            state.est_ns,
            sk,
            state,
        )
    };
}

/// Zeroes `e` and fills it.
///
/// # Safety
/// `sk` must be a full socket.
#[inline(always)]
unsafe fn fill(
    e: &mut ConnEvent,
    event_kind: u32,
    event_role: u16,
    ts_ns: u64,
    sk: *mut bpf_sock,
    state: &SockState,
) {
    // SAFETY: `e` is a whole ConnEvent; `sk` per the contract.
    unsafe {
        mem::zero(ptr::from_mut(e));
        e.hdr.kind = event_kind;
        e.hdr.cookie = state.cookie;
        e.hdr.ts_ns = stamp(ts_ns);
        e.netns_cookie = state.netns_cookie;
        if state.flags & sock_flags::CGROUP != 0 {
            e.cgroup_id = state.cgroup_id;
        }
        let s = &*sk;
        e.family = s.family as u16;
        e.role = event_role;
        e.local_port = s.src_port as u16;
        e.remote_port = u16::from_be(s.dst_port);
        if e.family == family::INET {
            e.local_addr[..4].copy_from_slice(&s.src_ip4.to_ne_bytes());
            e.remote_addr[..4].copy_from_slice(&s.dst_ip4.to_ne_bytes());
        } else {
            copy_ip6(&mut e.local_addr, &s.src_ip6);
            copy_ip6(&mut e.remote_addr, &s.dst_ip6);
        }
        if state.flags & sock_flags::PROCESS != 0 {
            e.pid = state.pid;
            e.tgid = state.tgid;
            mem::copy_comm(&raw mut e.comm, &raw const state.comm);
            e.uid = state.uid;
        }
        e.egress_base = state.egress_base;
        e.ingress_base = state.ingress_base;
        e.sock_flags = state.flags & !sock_flags::ANNOUNCE_PENDING;
    }
}
