//! Run time of the agent's kernel programs: the kernel's BPF statistics
//! (`run_time_ns`, `run_cnt` per program), which it only keeps while they are
//! enabled.
//!
//! The programs are the ones the agent holds file descriptors of
//! (/proc/PID/fdinfo names their `prog_id`); name and counters come from
//! `BPF_OBJ_GET_INFO_BY_FD`, or from the fdinfo counters when that call fails.
//! The kernel cuts program names at 15 bytes; the whole name is in /proc/kallsyms
//! (`bpf_prog_<tag>_<name>`, the BTF function name), see [`full_name`].

use std::{collections::BTreeMap, fs, io, os::fd::FromRawFd as _, os::fd::OwnedFd};

use anyhow::{Context as _, Result, bail};

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;
const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `bpf(cmd, attr, size)`, with `attr` a zero-padded `union bpf_attr` prefix.
fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<i32> {
    // SAFETY: `attr` is a writable, 8-byte aligned 128-byte buffer, larger than
    // every member of `union bpf_attr` the commands here use; the kernel reads and
    // writes at most `size` bytes of it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as i32)
    }
}

/// Kernel program statistics, on while this lives. Preferably through
/// `BPF_ENABLE_STATS`: the kernel counts while the returned descriptor is open and
/// stops by itself when it closes, also if this process dies, and
/// `kernel.bpf_stats_enabled` is never written. Otherwise the sysctl is set to 1
/// and its old value written back on drop.
pub enum StatsOn {
    Fd(#[allow(dead_code)] OwnedFd),
    Sysctl { old: String },
}

impl StatsOn {
    pub fn enable() -> Result<Self> {
        let mut attr = [0u64; 16];
        attr[0] = u64::from(BPF_STATS_RUN_TIME);
        match bpf(BPF_ENABLE_STATS, &mut attr) {
            // SAFETY: the kernel returned a new descriptor that nothing else owns.
            Ok(fd) => Ok(Self::Fd(unsafe { OwnedFd::from_raw_fd(fd) })),
            Err(e) => {
                let old = fs::read_to_string(SYSCTL)
                    .with_context(|| format!("BPF_ENABLE_STATS failed ({e}); reading {SYSCTL}"))?;
                fs::write(SYSCTL, "1").with_context(|| format!("writing 1 to {SYSCTL}"))?;
                Ok(Self::Sysctl {
                    old: old.trim().to_owned(),
                })
            }
        }
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        if let Self::Sysctl { old } = self
            && let Err(e) = fs::write(SYSCTL, old.as_bytes())
        {
            eprintln!("bench: could not restore {SYSCTL} to {old}: {e}");
        }
    }
}

/// One program's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prog {
    pub name: String,
    /// `prog_tag` (hex), as fdinfo and /proc/kallsyms show it.
    pub tag: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// The counters fdinfo shows for one descriptor of a program (links show the
/// `prog_id` without counters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdInfo {
    pub prog_id: u32,
    pub tag: Option<String>,
    pub counters: Option<(u64, u64)>,
}

/// The `prog_id` and, for a program descriptor, `run_time_ns` and `run_cnt` of
/// /proc/PID/fdinfo/FD text; `None` for descriptors of anything else.
pub fn parse_fdinfo(text: &str) -> Option<FdInfo> {
    let text_field = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim())
        })
    };
    let field = |name: &str| text_field(name)?.parse::<u64>().ok();
    let prog_id = u32::try_from(field("prog_id")?).ok()?;
    let counters = field("run_time_ns").zip(field("run_cnt"));
    Some(FdInfo {
        prog_id,
        tag: text_field("prog_tag").map(str::to_owned),
        counters,
    })
}

/// Name and counters of program `id`, from the kernel.
fn prog_info(id: u32) -> io::Result<Prog> {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(id); // prog_id
    // SAFETY: a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?) };
    // struct bpf_prog_info: name[16] at byte 64, run_time_ns at 192, run_cnt at 200
    // (linux/bpf.h; 232 bytes in Linux 6.18). A longer zeroed buffer is accepted.
    let mut info = [0u64; 32];
    let mut attr = [0u64; 16];
    use std::os::fd::AsRawFd as _;
    // info.bpf_fd (u32), info.info_len (u32), info.info (u64 pointer)
    attr[0] = (fd.as_raw_fd() as u32 as u64) | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let name: Vec<u8> = info[8..10]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .take_while(|&b| b != 0)
        .collect();
    Ok(Prog {
        name: String::from_utf8_lossy(&name).into_owned(),
        tag: info[1]
            .to_ne_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        run_time_ns: info[24],
        run_cnt: info[25],
    })
}

/// The counters of every program `pid` holds a descriptor of, by program id.
pub fn programs_of(pid: u32) -> Result<BTreeMap<u32, Prog>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut seen: BTreeMap<u32, FdInfo> = BTreeMap::new();
    for e in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(e) = e else { continue };
        // A descriptor closed since the listing is no error.
        let Ok(text) = fs::read_to_string(e.path()) else {
            continue;
        };
        if let Some(fi) = parse_fdinfo(&text) {
            let slot = seen.entry(fi.prog_id).or_insert_with(|| fi.clone());
            if slot.counters.is_none() {
                slot.counters = fi.counters;
            }
        }
    }
    if seen.is_empty() {
        bail!("{dir}: the agent holds no BPF program descriptors");
    }
    Ok(seen
        .into_iter()
        .map(|(id, fi)| {
            let prog = prog_info(id).unwrap_or_else(|_| {
                let (run_time_ns, run_cnt) = fi.counters.unwrap_or_default();
                Prog {
                    name: format!("prog {id}"),
                    tag: fi.tag.clone().unwrap_or_default(),
                    run_time_ns,
                    run_cnt,
                }
            });
            (id, prog)
        })
        .collect())
}

/// The whole name of the program with `tag` whose kernel name (cut at 15 bytes)
/// is `short`, from /proc/kallsyms text: its JIT image is `bpf_prog_<tag>_<name>`
/// (subprograms share the tag under their own names, hence the prefix check).
pub fn full_name(kallsyms: &str, tag: &str, short: &str) -> Option<String> {
    let prefix = format!("bpf_prog_{tag}_");
    kallsyms.lines().find_map(|l| {
        let sym = l.split_whitespace().nth(2)?;
        let name = sym.strip_prefix(&prefix)?;
        (name.starts_with(short) && !short.is_empty()).then(|| name.to_owned())
    })
}

/// Per program: (name, runs, nanoseconds) between two readings.
pub fn delta(before: &BTreeMap<u32, Prog>, after: &BTreeMap<u32, Prog>) -> Vec<(String, u64, u64)> {
    after
        .iter()
        .map(|(id, a)| {
            let b = before.get(id);
            (
                a.name.clone(),
                a.run_cnt.saturating_sub(b.map_or(0, |b| b.run_cnt)),
                a.run_time_ns.saturating_sub(b.map_or(0, |b| b.run_time_ns)),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_fdinfo_gives_id_and_counters_links_the_id_only() {
        // /proc/PID/fdinfo of a cgroup_skb program and of a link to it (Linux 6.18).
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2081\nprog_type:\t8\n\
                    prog_jited:\t1\nprog_tag:\t3b185187f1855c4c\nmemlock:\t4096\nprog_id:\t212\n\
                    run_time_ns:\t1529021\nrun_cnt:\t5512\nrecursion_misses:\t0\nverified_insns:\t871\n";
        assert_eq!(
            parse_fdinfo(prog),
            Some(FdInfo {
                prog_id: 212,
                tag: Some("3b185187f1855c4c".into()),
                counters: Some((1529021, 5512))
            })
        );
        let link = "pos:\t0\nflags:\t02000000\nmnt_id:\t16\nino:\t2081\nlink_type:\tcgroup\n\
                    link_id:\t31\nprog_tag:\t3b185187f1855c4c\nprog_id:\t212\ncgroup_id:\t1\n\
                    attach_type:\t1\n";
        assert_eq!(
            parse_fdinfo(link),
            Some(FdInfo {
                prog_id: 212,
                tag: Some("3b185187f1855c4c".into()),
                counters: None
            })
        );
        let map = "pos:\t0\nflags:\t02000002\nmap_type:\t27\nkey_size:\t0\nmap_id:\t90\n";
        assert_eq!(parse_fdinfo(map), None);
        assert_eq!(parse_fdinfo("pos:\t0\nflags:\t02\n"), None);
    }

    #[test]
    fn whole_names_come_from_kallsyms_by_tag_and_prefix() {
        let kallsyms = "ffffffff81211498 t bpf_prog_realloc.cold\n\
                        ffffffffc0001000 t bpf_prog_3b185187f1855c4c_memset\t[bpf]\n\
                        ffffffffc0002000 t bpf_prog_3b185187f1855c4c_mtls_capture_egress\t[bpf]\n\
                        ffffffffc0003000 t bpf_prog_aa185187f1855c4c_mtls_capture_ingress\t[bpf]\n";
        assert_eq!(
            full_name(kallsyms, "3b185187f1855c4c", "mtls_capture_eg").as_deref(),
            Some("mtls_capture_egress")
        );
        assert_eq!(full_name(kallsyms, "3b185187f1855c4c", "other"), None);
        assert_eq!(
            full_name(kallsyms, "0000000000000000", "mtls_capture_eg"),
            None
        );
    }

    #[test]
    fn deltas_take_programs_loaded_in_between_from_zero() {
        let p = |name: &str, ns, n| Prog {
            name: name.into(),
            tag: String::new(),
            run_time_ns: ns,
            run_cnt: n,
        };
        let before = BTreeMap::from([(1, p("a", 100, 10))]);
        let after = BTreeMap::from([(1, p("a", 350, 15)), (2, p("b", 40, 2))]);
        assert_eq!(
            delta(&before, &after),
            vec![("a".into(), 5, 250), ("b".into(), 2, 40)]
        );
    }
}
