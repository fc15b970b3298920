//! `sock/inet_sock_set_state` (BTF tracepoint): the transitions that happen in the
//! owner's system call, so the current task is the socket's process.
//!
//! - CLOSE -> SYN_SENT (connect): remember pid, tgid, comm and cgroup in the socket's
//!   storage; the ESTABLISHED event carries them.
//! - -> LISTEN (listen): tell userspace who listens on which port, so accepted
//!   sockets can be attributed.
//! - -> CLOSE of a socket that predates the probes (sock_ops never armed its state
//!   callback): report the close.

use core::{ffi::c_void, ptr};

use agent_common::{ConnEvent, kind, role, sock_flags, stats::Stat};
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_skc_to_tcp_sock,
        },
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::maps::{MTLS_EVENTS, bump, sock_state, wakeup_flags};

const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

/// `struct sock_common` layout, unchanged since Linux 2.6: `skc_num` (local port,
/// host order) at byte 14 and `skc_family` at 16.
const SKC_NUM_OFFSET: usize = 14;
const SKC_FAMILY_OFFSET: usize = 16;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn mtls_sock_state(ctx: BtfTracePointContext) -> i32 {
    if let Err(stat) = try_sock_state(&ctx) {
        bump(stat, 1);
    }
    0
}

#[inline(always)]
fn try_sock_state(ctx: &BtfTracePointContext) -> Result<(), Stat> {
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    // Most transitions are of no interest: decide on the states before any helper.
    if new != TCP_SYN_SENT && new != TCP_LISTEN && new != TCP_CLOSE {
        return Ok(());
    }
    let sk: *mut c_void = ctx.arg(0);
    // SAFETY: sk is the tracepoint's trusted `struct sock *`.
    if unsafe { bpf_skc_to_tcp_sock(sk) }.is_null() {
        return Ok(());
    }
    if old == TCP_CLOSE && new == TCP_SYN_SENT {
        // SAFETY: trusted socket pointer.
        let st = unsafe { sock_state(sk, true) };
        if st.is_null() {
            return Err(Stat::StorageFailed);
        }
        // SAFETY: non-null storage.
        let state = unsafe { &mut *st };
        let pid_tgid = bpf_get_current_pid_tgid();
        state.pid = pid_tgid as u32;
        state.tgid = (pid_tgid >> 32) as u32;
        state.comm = bpf_get_current_comm().unwrap_or([0; 16]);
        state.uid = bpf_get_current_uid_gid() as u32;
        // SAFETY: plain helper calls on the trusted socket.
        unsafe {
            state.cgroup_id = bpf_get_current_cgroup_id();
            state.cookie = bpf_get_socket_cookie(sk);
        }
        state.flags |= sock_flags::PROCESS | sock_flags::CGROUP | sock_flags::COOKIE;
        return Ok(());
    }
    if new == TCP_LISTEN {
        return emit(sk, kind::LISTEN, true);
    }
    if new == TCP_CLOSE {
        // SAFETY: trusted socket pointer.
        let st = unsafe { sock_state(sk, false) };
        // SAFETY: checked non-null before the read.
        if !st.is_null() && unsafe { (*st).flags } & sock_flags::PREEXISTING != 0 {
            return emit(sk, kind::CLOSED, false);
        }
    }
    Ok(())
}

#[inline(always)]
fn emit(sk: *mut c_void, event_kind: u32, process: bool) -> Result<(), Stat> {
    let Some(mut entry) = MTLS_EVENTS.reserve_untyped::<ConnEvent>(0) else {
        return Err(Stat::RingbufFull);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: reserved space of the right size, zeroed then filled. The two reads of
    // `sk` are BTF-checked loads of `struct sock_common` members.
    unsafe {
        ptr::write_bytes(ev, 0, 1);
        let e = &mut *ev;
        e.hdr.kind = event_kind;
        e.hdr.cookie = bpf_get_socket_cookie(sk);
        e.hdr.ts_ns = bpf_ktime_get_ns();
        e.local_port = ptr::read_volatile(sk.cast::<u8>().add(SKC_NUM_OFFSET).cast::<u16>());
        e.family = ptr::read_volatile(sk.cast::<u8>().add(SKC_FAMILY_OFFSET).cast::<u16>());
        e.role = role::UNKNOWN;
        if process {
            let pid_tgid = bpf_get_current_pid_tgid();
            e.pid = pid_tgid as u32;
            e.tgid = (pid_tgid >> 32) as u32;
            e.comm = bpf_get_current_comm().unwrap_or([0; 16]);
            e.uid = bpf_get_current_uid_gid() as u32;
            e.cgroup_id = bpf_get_current_cgroup_id();
        }
    }
    entry.submit(wakeup_flags());
    bump(Stat::ConnEvents, 1);
    Ok(())
}
