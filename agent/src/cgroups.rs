//! cgroup v2: where it is mounted and which path a cgroup id names.
//!
//! The kernel reports cgroups by id (the kernfs node id, which is also the inode
//! number of the cgroup's directory). Paths are resolved with
//! `open_by_handle_at(FILEID_KERNFS)` like bpftool and systemd do, falling back to a
//! walk of the hierarchy when that is not permitted.

use std::{
    collections::HashMap,
    ffi::CString,
    fs, io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

/// Mount point of the cgroup v2 hierarchy, from `/proc/self/mountinfo`.
pub fn cgroup2_root() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_cgroup2_root(&text)
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Whether `path` is a directory of a cgroup v2 file system.
pub fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; `c` is NUL-terminated.
    // (`f_type` is i64 here but narrower on some targets, hence the conversion.)
    #[allow(clippy::useless_conversion)]
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && i64::from(st.f_type) == CGROUP2_SUPER_MAGIC
    }
}

/// The cgroup v2 hierarchy at `path`, or at `path/unified` (hybrid hosts, where
/// /sys/fs/cgroup is a tmpfs of v1 hierarchies and v2 sits in `unified`).
pub fn cgroup2_at(path: &Path) -> Option<PathBuf> {
    [path.to_path_buf(), path.join("unified")]
        .into_iter()
        .find(|p| is_cgroup2(p))
}

/// Finds the cgroup2 mount in mountinfo text; prefers one whose root is `/`.
pub fn parse_cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    let mut fallback = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        let (Some(root), Some(mount_point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let path = PathBuf::from(unescape_mountinfo(mount_point));
        if *root == "/" {
            return Some(path);
        }
        fallback.get_or_insert(path);
    }
    fallback
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Resolves cgroup ids to paths relative to the cgroup v2 root (`/` is the root).
pub struct CgroupResolver {
    root: PathBuf,
    root_dir: Option<fs::File>,
    /// Shared with every end in that cgroup: one allocation per cgroup, not per
    /// socket.
    cache: HashMap<u64, Option<Arc<str>>>,
    handles_work: bool,
}

const CACHE_LIMIT: usize = 16_384;
const FILEID_KERNFS: i32 = 0xfe;

#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: u64,
}

impl CgroupResolver {
    pub fn new(root: PathBuf) -> Self {
        let root_dir = fs::File::open(&root).ok();
        Self {
            root,
            root_dir,
            cache: HashMap::new(),
            handles_work: true,
        }
    }

    /// The path of cgroup `id` below the root, e.g. `/kubepods.slice/...`; `None` if
    /// the cgroup is gone or cannot be found.
    pub fn path(&mut self, id: u64) -> Option<Arc<str>> {
        if id == 0 {
            return None;
        }
        if let Some(hit) = self.cache.get(&id) {
            return hit.clone();
        }
        let found: Option<Arc<str>> = self
            .by_handle(id)
            .or_else(|| self.by_walk(id))
            .map(Arc::from);
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.clear();
        }
        // Misses are not cached: the cgroup may appear later.
        if found.is_some() {
            self.cache.insert(id, found.clone());
        }
        found
    }

    fn by_handle(&mut self, id: u64) -> Option<String> {
        if !self.handles_work {
            return None;
        }
        let dir = self.root_dir.as_ref()?;
        let mut handle = KernfsHandle {
            handle_bytes: 8,
            handle_type: FILEID_KERNFS,
            id,
        };
        // SAFETY: `handle` is a valid `struct file_handle` with 8 bytes of payload;
        // the returned fd is owned and closed below.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                dir.as_raw_fd(),
                &mut handle as *mut KernfsHandle,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let err = io::Error::last_os_error();
            if matches!(
                err.raw_os_error(),
                Some(libc::EPERM) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
            ) {
                self.handles_work = false;
            }
            return None;
        }
        let fd = fd as i32;
        let link = fs::read_link(format!("/proc/self/fd/{fd}"));
        // SAFETY: closing the fd returned by open_by_handle_at above.
        unsafe { libc::close(fd) };
        let link = link.ok()?;
        Some(self.relative(&link))
    }

    fn by_walk(&self, id: u64) -> Option<String> {
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            if meta.ino() == id {
                return Some(self.relative(&dir));
            }
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        None
    }

    fn relative(&self, path: &Path) -> String {
        match path.strip_prefix(&self.root) {
            Ok(rel) if rel.as_os_str().is_empty() => "/".to_owned(),
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => path.display().to_string(),
        }
    }
}

/// The cgroup id of a directory in the v2 hierarchy (its inode number).
pub fn cgroup_id(path: &Path) -> io::Result<u64> {
    Ok(fs::metadata(path)?.ino())
}

/// `CString` of a path, for the few libc calls here.
pub fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_root(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_root(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let escaped = "29 23 0:26 / /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_root(escaped),
            Some(PathBuf::from("/mnt/cg two"))
        );
        assert_eq!(
            parse_cgroup2_root("22 1 0:5 / /proc rw - proc proc rw\n"),
            None
        );
    }

    #[test]
    fn prefers_the_mount_of_the_hierarchy_root() {
        let text = "50 40 0:26 /kubepods/pod1 /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n\
            51 40 0:26 / /host/sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_root(text),
            Some(PathBuf::from("/host/sys/fs/cgroup"))
        );
    }
}
