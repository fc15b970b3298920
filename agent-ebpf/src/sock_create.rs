//! `cgroup/sock_create` on the cgroup v2 root: runs inside `socket(2)`, so the
//! current task is the socket's owner. A TCP socket gets its storage here, with the
//! process facts (pid, tgid, comm, uid, cgroup) that the ESTABLISHED, LISTEN and
//! ATTEMPT events of `sock_ops` carry later. One run per TCP socket a process
//! creates; accepted sockets are clones and never pass here (their server end
//! learns its process from its first egress segment or the LISTEN table).

use agent_common::{sock_flags, stats::Stat};
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie},
    },
    macros::cgroup_sock,
    programs::SockContext,
};

use crate::{
    maps::{bump, sock_state},
    mem,
};

const IPPROTO_TCP: u32 = 6;

#[cgroup_sock(sock_create)]
pub fn mtls_sock_create(ctx: SockContext) -> i32 {
    if let Err(stat) = try_sock_create(&ctx) {
        bump(stat, 1);
    }
    // Never refuse a socket: we only watch.
    1
}

#[inline(always)]
fn try_sock_create(ctx: &SockContext) -> Result<(), Stat> {
    // SAFETY: context field read.
    if unsafe { (*ctx.sock).protocol } != IPPROTO_TCP {
        return Ok(());
    }
    // SAFETY: the context is the new socket.
    let st = unsafe { sock_state(ctx.as_ptr(), true) };
    if st.is_null() {
        return Err(Stat::StorageFailed);
    }
    // SAFETY: non-null storage.
    let state = unsafe { &mut *st };
    let pid_tgid = bpf_get_current_pid_tgid();
    state.pid = pid_tgid as u32;
    state.tgid = (pid_tgid >> 32) as u32;
    // SAFETY: the destination is the storage's command name.
    unsafe { mem::current_comm(&raw mut state.comm) };
    state.uid = bpf_get_current_uid_gid() as u32;
    // SAFETY: plain helper calls on the context.
    unsafe {
        state.cgroup_id = bpf_get_current_cgroup_id();
        state.cookie = bpf_get_socket_cookie(ctx.as_ptr());
    }
    state.flags |= sock_flags::PROCESS | sock_flags::CGROUP | sock_flags::COOKIE;
    Ok(())
}
