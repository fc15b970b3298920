//! Maps, loader-patched globals and the small helpers every program shares.

use core::{ffi::c_void, ptr};

use agent_common::{
    DECIDED_ENTRIES, DEFAULT_CAPTURE_BUDGET, DEFAULT_RING_BYTES, Scratch, SockState,
    stats::{self, Stat},
};
use aya_ebpf::{
    bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_SK_STORAGE_GET_F_CREATE,
    },
    btf_maps::{LruHashMap, PerCpuArray, RingBuf, SkStorage},
    helpers::generated::{bpf_ringbuf_query, bpf_sk_storage_get},
    macros::btf_map,
};

/// Every event, lifecycle and data. Resized by the loader.
#[btf_map]
pub static MTLS_EVENTS: RingBuf<u8, { DEFAULT_RING_BYTES as usize }> = RingBuf::new();

/// Kernel-side counters (see `agent_common::stats`).
#[btf_map]
pub static MTLS_STATS: PerCpuArray<u64, { stats::LEN as usize }> = PerCpuArray::new();

/// Per-socket capture state, freed by the kernel with the socket.
#[btf_map]
pub static MTLS_SOCKS: SkStorage<SockState> = SkStorage::new();

/// Where a data event (with, in front, the announcement it may carry) is assembled
/// before `bpf_ringbuf_output` copies the used part.
#[btf_map]
pub static MTLS_SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// Cookies of sockets userspace needs no more bytes from.
#[btf_map]
pub static MTLS_DECIDED: LruHashMap<u64, u8, { DECIDED_ENTRIES as usize }> = LruHashMap::new();

/// Capture budget per direction in bytes; patched by the loader.
#[unsafe(no_mangle)]
static MTLS_CAPTURE_BUDGET: u32 = DEFAULT_CAPTURE_BUDGET;

/// Ring-buffer fill level that makes a producer wake the reader; patched by the loader.
#[unsafe(no_mangle)]
static MTLS_WAKEUP_BYTES: u64 = 256 * 1024;

#[inline(always)]
pub fn capture_budget() -> u32 {
    // SAFETY: a plain read of a loader-initialised global; volatile so the
    // compiler does not fold the default in.
    unsafe { ptr::read_volatile(&MTLS_CAPTURE_BUDGET) }
}

#[inline(always)]
pub fn bump(stat: Stat, n: u64) {
    if let Some(slot) = MTLS_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot owned by this CPU for the duration of the program.
        unsafe { *slot += n };
    }
}

#[inline(always)]
pub fn ring_ptr() -> *mut c_void {
    ptr::from_ref(&MTLS_EVENTS).cast_mut().cast()
}

/// Ring-buffer flags for a submission: no wakeup until the reader is behind by
/// `MTLS_WAKEUP_BYTES`; otherwise userspace drains on its own short timer.
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    // SAFETY: query of our own ring buffer map.
    let avail = unsafe { bpf_ringbuf_query(ring_ptr(), BPF_RB_AVAIL_DATA.into()) };
    // SAFETY: as in `capture_budget`.
    let threshold = unsafe { ptr::read_volatile(&MTLS_WAKEUP_BYTES) };
    if avail >= threshold {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    }
}

/// The storage of `sk`, created when `create` is set. Null when absent or on failure.
///
/// # Safety
/// `sk` must be a socket pointer the verifier accepts for `bpf_sk_storage_get`
/// (a full socket from `bpf_sk_fullsock`, `bpf_sock_ops.sk`, or a BTF `struct sock *`).
#[inline(always)]
pub unsafe fn sock_state(sk: *mut c_void, create: bool) -> *mut SockState {
    let flags = if create {
        BPF_SK_STORAGE_GET_F_CREATE as u64
    } else {
        0
    };
    let map = ptr::from_ref(&MTLS_SOCKS).cast_mut().cast();
    // SAFETY: see the function contract; the map is ours.
    unsafe { bpf_sk_storage_get(map, sk, ptr::null_mut(), flags) }.cast()
}
