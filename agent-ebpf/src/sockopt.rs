//! `cgroup/getsockopt` on the cgroup v2 root: what a proxy learns about the
//! connections it intercepts.
//!
//! A proxy that captures traffic with iptables `REDIRECT` (Istio's sidecar on 15001
//! and 15006, ztunnel, Linkerd's proxy on 4140 and 4143) accepts the redirected
//! connection and asks the kernel where its client meant to go:
//! `getsockopt(SOL_IP, SO_ORIGINAL_DST)` (`SOL_IPV6`, `IP6T_SO_ORIGINAL_DST` for
//! IPv6). The program runs after the kernel answered, reads the answer from the
//! option buffer and reports it with the socket and the calling process: the
//! accepting socket is then known to belong to an interceptor, and the connection
//! can be joined with the client socket that named the original destination.
//!
//! A socket still waiting to be announced (see `announce`) is announced first, so
//! its ESTABLISHED event comes before the answer that names it.
//!
//! Every other getsockopt call returns after two compares; the result is never
//! changed.

use core::ptr;

use agent_common::{OrigDstEvent, family, kind, sock_flags, stats::Stat};
use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sockopt,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_ktime_get_ns},
    },
    macros::cgroup_sockopt,
    programs::SockoptContext,
};

use crate::{
    announce::announce,
    capture::copy_ip6,
    maps::{MTLS_EVENTS, bump, sock_state, wakeup_flags},
    mem,
};

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
/// `SO_ORIGINAL_DST` (linux/netfilter_ipv4.h) and `IP6T_SO_ORIGINAL_DST`
/// (linux/netfilter_ipv6/ip6_tables.h) share the number.
const SO_ORIGINAL_DST: i32 = 80;
/// `struct sockaddr_in`: family, port (network order), address.
const SOCKADDR_IN_LEN: usize = 16;
/// `struct sockaddr_in6`: family, port, flowinfo, address (at 8), scope id.
const SOCKADDR_IN6_LEN: usize = 28;

#[cgroup_sockopt(getsockopt)]
pub fn mtls_getsockopt(ctx: SockoptContext) -> i32 {
    if let Err(stat) = try_getsockopt(&ctx) {
        bump(stat, 1);
    }
    // 1: the call proceeds with the kernel's own answer, untouched.
    1
}

#[inline(always)]
fn try_getsockopt(ctx: &SockoptContext) -> Result<(), Stat> {
    let so = ctx.sockopt;
    // SAFETY: context field reads.
    let (level, optname) = unsafe { ((*so).level, (*so).optname) };
    if optname != SO_ORIGINAL_DST || (level != SOL_IP && level != SOL_IPV6) {
        return Ok(());
    }
    // SAFETY: context field read.
    let sk = unsafe { (*so).__bindgen_anon_1.sk };
    if sk.is_null() {
        return Ok(());
    }
    // SAFETY: `sk` is the context's full socket.
    let st = unsafe { sock_state(sk.cast(), false) };
    let mut cookie = 0;
    if !st.is_null() {
        // SAFETY: non-null storage.
        let state = unsafe { &mut *st };
        if state.flags & sock_flags::COOKIE != 0 {
            cookie = state.cookie;
        }
        if let Err(stat) = announce(sk, state) {
            bump(stat, 1);
        }
    }
    let Some(mut entry) = MTLS_EVENTS.reserve_untyped::<OrigDstEvent>(0) else {
        return Err(Stat::RingbufFull);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: reserved space of the right size, zeroed then filled; context and
    // socket field reads.
    unsafe {
        mem::zero(ev);
        let e = &mut *ev;
        e.hdr.kind = kind::ORIGINAL_DST;
        e.hdr.ts_ns = bpf_ktime_get_ns();
        e.hdr.cookie = cookie;
        e.netns_cookie = bpf_get_netns_cookie(ctx.as_ptr());
        e.cgroup_id = bpf_get_current_cgroup_id();
        let s = &*sk;
        e.family = s.family as u16;
        e.local_port = s.src_port as u16;
        e.remote_port = u16::from_be(s.dst_port);
        if e.family == family::INET {
            e.local_addr[..4].copy_from_slice(&s.src_ip4.to_ne_bytes());
            e.remote_addr[..4].copy_from_slice(&s.dst_ip4.to_ne_bytes());
        } else {
            copy_ip6(&mut e.local_addr, &s.src_ip6);
            copy_ip6(&mut e.remote_addr, &s.dst_ip6);
        }
        let pid_tgid = bpf_get_current_pid_tgid();
        e.pid = pid_tgid as u32;
        e.tgid = (pid_tgid >> 32) as u32;
        let uid_gid = bpf_get_current_uid_gid();
        e.uid = uid_gid as u32;
        e.gid = (uid_gid >> 32) as u32;
        mem::current_comm(&raw mut e.comm);
        e.result = (*so).retval;
        if e.result == 0 {
            read_sockaddr(so, e);
        }
    }
    entry.submit(wakeup_flags());
    bump(Stat::OrigDstEvents, 1);
    Ok(())
}

/// Copies the `sockaddr_in`/`sockaddr_in6` the kernel returned.
///
/// # Safety
/// `so` is the program's context.
#[inline(always)]
unsafe fn read_sockaddr(so: *mut bpf_sockopt, e: &mut OrigDstEvent) {
    // SAFETY: context field reads.
    let (start, end) = unsafe {
        (
            (*so).__bindgen_anon_2.optval as usize,
            (*so).__bindgen_anon_3.optval_end as usize,
        )
    };
    if start + SOCKADDR_IN_LEN > end {
        return;
    }
    // SAFETY: the first 16 bytes are inside [optval, optval_end), checked above.
    let (fam, port) = unsafe {
        (
            ptr::read_unaligned(start as *const u16),
            ptr::read_unaligned((start + 2) as *const u16),
        )
    };
    e.original_port = u16::from_be(port);
    if fam == family::INET {
        // SAFETY: bytes 4..8 are inside the checked 16.
        let a = unsafe { ptr::read_unaligned((start + 4) as *const [u8; 4]) };
        e.original_addr[..4].copy_from_slice(&a);
        e.original_family = family::INET;
    } else if fam == family::INET6 {
        if start + SOCKADDR_IN6_LEN > end {
            return;
        }
        // SAFETY: bytes 8..24 are inside the checked 28.
        e.original_addr = unsafe { ptr::read_unaligned((start + 8) as *const [u8; 16]) };
        e.original_family = family::INET6;
    }
}
