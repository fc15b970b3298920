//! Loading, attaching and detaching the kernel programs.
//!
//! Attach order matters: sock_create and sock_ops go first so that every socket
//! created after them has its owner and every connection established after them
//! gets its sequence bases; the capture programs go last. Every link is a `bpf_link` owned by this process: dropping [`Probes`]
//! (or the process dying) detaches everything. Nothing is pinned.

use std::{
    fs::File,
    io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use agent_common::{globals, maps, programs, stats};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockopt, ProgramError,
        SockOps,
    },
};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::cgroups;

/// The eBPF object built by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(
        "missing capability {name}: {why}; run as root or add it to the container's capabilities"
    )]
    MissingCapability {
        name: &'static str,
        why: &'static str,
    },
    #[error("cgroup v2 is not mounted: no cgroup2 line in /proc/self/mountinfo")]
    NoCgroup2,
    #[error("opening the cgroup v2 root {path}: {source}")]
    CgroupOpen { path: PathBuf, source: io::Error },
    #[error(
        "--cgroup-root {0}: not a cgroup v2 hierarchy (nor is {0}/unified); mount the host's /sys/fs/cgroup there"
    )]
    NotCgroup2(PathBuf),
    #[error(
        "kernel BTF is missing ({path}): the kernel must be built with CONFIG_DEBUG_INFO_BTF: {source}"
    )]
    NoBtf {
        path: &'static str,
        source: aya::BtfError,
    },
    #[error("this binary was built with AYA_BUILD_SKIP=1 and carries no eBPF programs")]
    EmptyObject,
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("program {program} is missing from the eBPF object")]
    MissingProgram { program: &'static str },
    #[error("map {map} is missing from the eBPF object")]
    MissingMap { map: &'static str },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("loading program {program} into the kernel failed: {source}")]
    ProgramLoad {
        program: &'static str,
        source: ProgramError,
    },
    #[error("attaching {program} to {target} failed: {source}")]
    Attach {
        program: &'static str,
        target: String,
        source: ProgramError,
    },
    #[error("capture budget {0} is out of range 1..={max}", max = agent_common::MAX_CAPTURE_BUDGET)]
    Budget(u32),
    #[error("ring buffer size {0} must be a power of two of at least 4096 bytes")]
    RingSize(u32),
}

/// What the kernel side is asked to do.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Bytes captured per direction per connection.
    pub capture_budget: u32,
    /// Ring buffer size in bytes.
    pub ring_bytes: u32,
    /// Fill level of the ring buffer at which producers wake the reader.
    pub wakeup_bytes: u64,
    /// The cgroup v2 hierarchy to attach to; `None`: the mount in mountinfo.
    pub cgroup_root: Option<PathBuf>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            capture_budget: agent_common::DEFAULT_CAPTURE_BUDGET,
            ring_bytes: agent_common::DEFAULT_RING_BYTES,
            wakeup_bytes: u64::from(agent_common::DEFAULT_RING_BYTES / 16),
            cgroup_root: None,
        }
    }
}

/// Loaded and attached kernel programs. Dropping it detaches them.
pub struct Probes {
    ebpf: Ebpf,
    stats: PerCpuArray<MapData, u64>,
    decided: HashMap<MapData, u64, u8>,
    attached: Vec<String>,
    cgroup_root: PathBuf,
}

/// Capabilities the agent needs, checked before anything is loaded so the error
/// names the missing one instead of an `EPERM` from deep inside a syscall.
const REQUIRED_CAPS: &[(u32, &str, &str)] = &[
    (
        39,
        "CAP_BPF",
        "needed to create maps and load eBPF programs",
    ),
    (
        38,
        "CAP_PERFMON",
        "needed for the programs' reads of kernel socket and packet pointers",
    ),
    (
        12,
        "CAP_NET_ADMIN",
        "needed to attach cgroup_skb and sock_ops programs",
    ),
];
const CAP_SYS_ADMIN: u32 = 21;

fn effective_caps() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| io::Error::other("no CapEff line in /proc/self/status"))
}

/// Fails with the first missing capability. `CAP_SYS_ADMIN` stands in for
/// `CAP_BPF` and `CAP_PERFMON` (kernels before 5.8 know only it).
pub fn check_privileges() -> Result<(), ProbeError> {
    let Ok(caps) = effective_caps() else {
        return Ok(()); // cannot tell; let the kernel decide
    };
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    for &(bit, name, why) in REQUIRED_CAPS {
        let covered = has(bit) || (bit != 12 && has(CAP_SYS_ADMIN));
        if !covered {
            return Err(ProbeError::MissingCapability { name, why });
        }
    }
    Ok(())
}

fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid pointer to a stack value.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        // Kernels >= 5.11 account BPF memory to the memory cgroup; the limit is moot.
        debug!(error = %io::Error::last_os_error(), "setrlimit(RLIMIT_MEMLOCK) failed; relying on memcg accounting");
    }
}

impl Probes {
    /// Loads every program and attaches it. On error nothing stays attached.
    pub fn load(cfg: &ProbeConfig) -> Result<Self, ProbeError> {
        if cfg.capture_budget == 0 || cfg.capture_budget > agent_common::MAX_CAPTURE_BUDGET {
            return Err(ProbeError::Budget(cfg.capture_budget));
        }
        if !cfg.ring_bytes.is_power_of_two() || cfg.ring_bytes < 4096 {
            return Err(ProbeError::RingSize(cfg.ring_bytes));
        }
        if EBPF_OBJECT.is_empty() {
            return Err(ProbeError::EmptyObject);
        }
        check_privileges()?;
        let cgroup_root = match &cfg.cgroup_root {
            Some(p) => cgroups::cgroup2_at(p).ok_or_else(|| ProbeError::NotCgroup2(p.clone()))?,
            None => cgroups::cgroup2_root().ok_or(ProbeError::NoCgroup2)?,
        };
        // Only the root cgroup has no cgroup.events: below it (a container's own
        // cgroup namespace) the programs would see that subtree's sockets alone.
        if cgroup_root.join("cgroup.events").exists() {
            warn!(
                cgroup = %cgroup_root.display(),
                "attaching below the host's cgroup root: only sockets of processes in this subtree are seen; \
                 in a container, mount the host's /sys/fs/cgroup and pass it as --cgroup-root"
            );
        }
        let btf = Btf::from_sys_fs().map_err(|source| ProbeError::NoBtf {
            path: "/sys/kernel/btf/vmlinux",
            source,
        })?;
        raise_memlock();

        let mut ebpf = EbpfLoader::new()
            .btf(&btf)
            .map_max_entries(maps::EVENTS, cfg.ring_bytes)
            .override_global(globals::CAPTURE_BUDGET, &cfg.capture_budget, true)
            .override_global(globals::WAKEUP_BYTES, &cfg.wakeup_bytes, true)
            .load(EBPF_OBJECT)
            .map_err(ProbeError::Load)?;

        let cgroup = File::open(&cgroup_root).map_err(|source| ProbeError::CgroupOpen {
            path: cgroup_root.clone(),
            source,
        })?;
        let mut attached = Vec::new();

        // 1. sock_create: the owner of every TCP socket created from now on, in
        //    process context (socket(2)).
        {
            let name = programs::SOCK_CREATE;
            let prog: &mut CgroupSock = program(&mut ebpf, name)?;
            prog.load().map_err(|source| ProbeError::ProgramLoad {
                program: name,
                source,
            })?;
            prog.attach(cgroup.as_fd(), cgroup_mode())
                .map_err(|source| ProbeError::Attach {
                    program: name,
                    target: cgroup_root.display().to_string(),
                    source,
                })?;
            attached.push(format!("cgroup/sock_create@{}", cgroup_root.display()));
        }
        // 2. sock_ops: connect, listen, established, failed attempts, close,
        //    sequence bases.
        {
            let name = programs::SOCK_OPS;
            let prog: &mut SockOps = program(&mut ebpf, name)?;
            prog.load().map_err(|source| ProbeError::ProgramLoad {
                program: name,
                source,
            })?;
            prog.attach(cgroup.as_fd(), cgroup_mode())
                .map_err(|source| ProbeError::Attach {
                    program: name,
                    target: cgroup_root.display().to_string(),
                    source,
                })?;
            attached.push(format!("sock_ops@{}", cgroup_root.display()));
        }
        // 3. The capture programs.
        for (name, attach_type, label) in [
            (
                programs::CAPTURE_EGRESS,
                CgroupSkbAttachType::Egress,
                "cgroup_skb/egress",
            ),
            (
                programs::CAPTURE_INGRESS,
                CgroupSkbAttachType::Ingress,
                "cgroup_skb/ingress",
            ),
        ] {
            let prog: &mut CgroupSkb = program(&mut ebpf, name)?;
            prog.load().map_err(|source| ProbeError::ProgramLoad {
                program: name,
                source,
            })?;
            prog.attach(cgroup.as_fd(), attach_type, cgroup_mode())
                .map_err(|source| ProbeError::Attach {
                    program: name,
                    target: cgroup_root.display().to_string(),
                    source,
                })?;
            attached.push(format!("{label}@{}", cgroup_root.display()));
        }
        // 4. getsockopt: the SO_ORIGINAL_DST answers of proxies (interceptions).
        {
            let name = programs::GETSOCKOPT;
            let prog: &mut CgroupSockopt = program(&mut ebpf, name)?;
            prog.load().map_err(|source| ProbeError::ProgramLoad {
                program: name,
                source,
            })?;
            prog.attach(cgroup.as_fd(), cgroup_mode())
                .map_err(|source| ProbeError::Attach {
                    program: name,
                    target: cgroup_root.display().to_string(),
                    source,
                })?;
            attached.push(format!("cgroup/getsockopt@{}", cgroup_root.display()));
        }

        let stats = ebpf
            .take_map(maps::STATS)
            .ok_or(ProbeError::MissingMap { map: maps::STATS })
            .and_then(|m| {
                PerCpuArray::try_from(m).map_err(|source| ProbeError::Map {
                    map: maps::STATS,
                    source,
                })
            })?;
        let decided = ebpf
            .take_map(maps::DECIDED)
            .ok_or(ProbeError::MissingMap { map: maps::DECIDED })
            .and_then(|m| {
                HashMap::try_from(m).map_err(|source| ProbeError::Map {
                    map: maps::DECIDED,
                    source,
                })
            })?;
        info!(programs = ?attached, cgroup = %cgroup_root.display(), budget = cfg.capture_budget, "probes attached");
        Ok(Self {
            ebpf,
            stats,
            decided,
            attached,
            cgroup_root,
        })
    }

    /// The event ring buffer; can be taken once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or(ProbeError::MissingMap { map: maps::EVENTS })?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            map: maps::EVENTS,
            source,
        })
    }

    /// The aya-log reader for messages from the kernel programs, if they log.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(logger) => Some(logger),
            Err(err) => {
                warn!(error = %err, "kernel program logs are not available");
                None
            }
        }
    }

    /// Kernel counters summed over CPUs, in [`stats::ALL`] order.
    pub fn stats(&self) -> Vec<(stats::Stat, u64)> {
        stats::ALL
            .iter()
            .map(|&s| {
                let v = self
                    .stats
                    .get(&(s as u32), 0)
                    .map(|per_cpu| per_cpu.iter().copied().sum())
                    .unwrap_or(0);
                (s, v)
            })
            .collect()
    }

    /// Tells the kernel that no more bytes of this socket are wanted.
    pub fn mark_decided(&mut self, cookie: u64) -> Result<(), aya::maps::MapError> {
        self.decided.insert(&cookie, &1, 0)
    }

    /// Drops a decided mark the kernel never consumed (the socket sent nothing
    /// more in its budget before it closed), so the LRU map keeps room for live
    /// ones. Not finding it is the usual case.
    pub fn clear_decided(&mut self, cookie: u64) {
        let _ = self.decided.remove(&cookie);
    }

    /// Human-readable names of what is attached.
    pub fn attached(&self) -> &[String] {
        &self.attached
    }

    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        info!(programs = self.attached.len(), "detaching probes");
    }
}

/// bpf_link attachments (5.7+) are always multi-program and take no flags; the
/// older prog_attach path needs `BPF_F_ALLOW_MULTI` to coexist with other programs.
fn cgroup_mode() -> CgroupAttachMode {
    use aya::util::KernelVersion;
    let links = KernelVersion::current().map_or(true, |v| v >= KernelVersion::new(5, 7, 0));
    if links {
        CgroupAttachMode::Single
    } else {
        CgroupAttachMode::AllowMultiple
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(ProbeError::MissingProgram { program: name })?;
    prog.try_into().map_err(|source| ProbeError::ProgramLoad {
        program: name,
        source,
    })
}
