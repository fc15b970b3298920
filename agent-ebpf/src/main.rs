//! mtls-auditor kernel programs.
//!
//! - `capture`: cgroup_skb ingress/egress on the cgroup v2 root. Sends the first
//!   bytes of each direction of every TCP connection up the ring buffer; after the
//!   budget (or once userspace has decided) a packet costs one socket-storage lookup.
//! - `sock_create`: `cgroup/sock_create`, for what only process context knows: who
//!   owns a TCP socket (kept in its storage).
//! - `sock_ops`: connect, listen, established (active and passive), failed connection
//!   attempts and close, with the sequence bases that turn TCP sequence numbers into
//!   stream offsets.
//! - `sockopt`: `cgroup/getsockopt` on the cgroup v2 root: the `SO_ORIGINAL_DST`
//!   answers that reveal which sockets a proxy intercepted, and for where.
//! - `announce`: the ESTABLISHED event of a socket, sent lazily when it first
//!   speaks (or closes), and the other lifecycle events built from socket storage.
#![no_std]
#![no_main]

mod announce;
mod capture;
mod maps;
mod mem;
mod sock_create;
mod sock_ops;
mod sockopt;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

/// GPL-compatible: the tracing helpers (`bpf_probe_read_kernel`, `bpf_get_current_*`)
/// require it.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
