//! Network namespaces, veth pairs, cgroups and temporary directories, each removed
//! by its guard.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::sh;

/// A network namespace (`ip netns add`), deleted on drop together with the
/// interfaces inside it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` with `lo` up. A leftover namespace of the same name
    /// (from a run that was killed) is deleted first: the names are ours.
    pub fn new(name: &str) -> Self {
        assert!(
            name.starts_with("mtlsa-"),
            "test namespaces are named mtlsa-*"
        );
        if Path::new("/run/netns").join(name).exists() {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .status();
        }
        sh("ip", &["netns", "add", name]);
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `setns`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `ip -n <ns> args...`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        sh("ip", &full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let status = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

/// Two namespaces joined by a veth pair, with IPv4 and IPv6 addresses:
/// `a` is `10.213.<net>.1` / `fd13:213::<net>:1`, `b` is `.2` / `::<net>:2`.
#[derive(Debug)]
pub struct NetnsPair {
    pub a: Netns,
    pub b: Netns,
    pub net: u8,
}

impl NetnsPair {
    pub fn new(tag: &str, net: u8) -> Self {
        let a = Netns::new(&format!("mtlsa-{tag}-a"));
        let b = Netns::new(&format!("mtlsa-{tag}-b"));
        let (va, vb) = (format!("mtlsa{net}a"), format!("mtlsa{net}b"));
        // A leftover veth of a killed run lives in a namespace we just replaced;
        // one left in the root namespace is removed here.
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &va])
            .output();
        sh(
            "ip",
            &["link", "add", &va, "type", "veth", "peer", "name", &vb],
        );
        sh("ip", &["link", "set", &va, "netns", a.name()]);
        sh("ip", &["link", "set", &vb, "netns", b.name()]);
        let pair = Self { a, b, net };
        for (ns, dev, v4, v6) in [
            (&pair.a, &va, pair.a_v4(), pair.a_v6()),
            (&pair.b, &vb, pair.b_v4(), pair.b_v6()),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        pair
    }

    pub fn a_v4(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 213, self.net, 1))
    }

    pub fn b_v4(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 213, self.net, 2))
    }

    pub fn a_v6(&self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(
            0xfd13,
            0x213,
            0,
            0,
            0,
            0,
            u16::from(self.net),
            1,
        ))
    }

    pub fn b_v6(&self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(
            0xfd13,
            0x213,
            0,
            0,
            0,
            0,
            u16::from(self.net),
            2,
        ))
    }
}

/// A cgroup v2 directory below `<root>/mtls-auditor-tests/`, removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    rel: String,
}

impl Cgroup {
    pub fn new(name: &str) -> Self {
        let root = mtls_auditor::cgroups::cgroup2_root().expect("cgroup v2 is not mounted");
        Self::at(&root, &format!("mtls-auditor-tests/{name}"))
    }

    /// Creates `<root>/<rel>` (parents included).
    pub fn at(root: &Path, rel: &str) -> Self {
        let path = root.join(rel);
        if path.exists() {
            let _ = fs::remove_dir(&path);
        }
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self {
            path,
            rel: format!("/{rel}"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path below the cgroup v2 root, as the agent reports it.
    pub fn rel(&self) -> &str {
        &self.rel
    }

    pub fn id(&self) -> u64 {
        mtls_auditor::cgroups::cgroup_id(&self.path).expect("stat cgroup")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Our children are killed by their own guards first; give the kernel a moment
        // to notice the cgroup is empty.
        for _ in 0..50 {
            if fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove cgroup {}", self.path.display());
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new() -> Self {
        Self(
            tempfile::Builder::new()
                .prefix("mtlsa-test-")
                .tempdir()
                .expect("tempdir"),
        )
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

/// Several nested cgroup paths below one root, sharing parents: every directory it
/// creates is removed on drop, deepest first.
#[derive(Debug)]
pub struct CgroupTree {
    dirs: Vec<Cgroup>,
    leaves: Vec<usize>,
}

impl CgroupTree {
    /// Creates `<cgroup2 root>/mtls-auditor-tests/<rel>` for every `rel`.
    pub fn new(rels: &[&str]) -> Self {
        let root = mtls_auditor::cgroups::cgroup2_root().expect("cgroup v2 is not mounted");
        let mut dirs: Vec<Cgroup> = Vec::new();
        let mut leaves = Vec::new();
        for rel in rels {
            let mut prefix = String::from("mtls-auditor-tests");
            for seg in rel.split('/').filter(|s| !s.is_empty()) {
                prefix.push('/');
                prefix.push_str(seg);
                if !dirs.iter().any(|d| d.rel() == format!("/{prefix}")) {
                    dirs.push(Cgroup::at(&root, &prefix));
                }
            }
            let i = dirs
                .iter()
                .position(|d| d.rel() == format!("/{prefix}"))
                .expect("just created");
            leaves.push(i);
        }
        Self { dirs, leaves }
    }

    /// The `i`th path given to `new`.
    pub fn leaf(&self, i: usize) -> &Cgroup {
        &self.dirs[self.leaves[i]]
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        while let Some(d) = self.dirs.pop() {
            drop(d);
        }
    }
}
