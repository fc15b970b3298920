//! Pod UID and container ID from a cgroup v2 path, for the shapes the kubelet and
//! container runtimes create:
//!
//! | driver | runtime | path (below the cgroup root) |
//! | --- | --- | --- |
//! | systemd | containerd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope` |
//! | systemd | CRI-O | `.../kubepods-pod<uid>.slice/crio-<id>.scope` (and `crio-conmon-<id>.scope`, the monitor) |
//! | systemd | Docker (cri-dockerd) | `.../kubepods-besteffort-pod<uid>.slice/docker-<id>.scope` |
//! | cgroupfs | containerd, Docker | `/kubepods/burstable/pod<uid>/<id>` |
//! | cgroupfs | CRI-O | `/kubepods/pod<uid>/crio-<id>` |
//!
//! Prefixes in front (`/kubelet.slice/kubelet-kubepods.slice/...` in kind, a
//! system slice, a nested container runtime) do not matter: the pod segment and
//! the container segment are recognised wherever they are.

/// What a pod cgroup path says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    /// The pod UID with dashes (`5c8e...-...`).
    pub pod_uid: String,
    /// The 64-hex container ID, when the path reaches a container.
    pub container_id: Option<String>,
    /// `containerd`, `cri-o` or `docker`, when the path says.
    pub runtime: Option<&'static str>,
    /// The path is a runtime's monitor process (CRI-O conmon), not the container.
    pub monitor: bool,
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A UID in its canonical 8-4-4-4-12 form; accepts `_` for `-` (systemd escaping).
fn canonical_uid(s: &str) -> Option<String> {
    let u = s.replace('_', "-");
    let parts: Vec<&str> = u.split('-').collect();
    let ok = parts.len() == 5
        && [8, 4, 4, 4, 12]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then(|| u.to_ascii_lowercase())
}

fn pod_segment(seg: &str) -> Option<String> {
    // systemd: kubepods[-qos]-pod<uid>.slice
    if let Some(rest) = seg.strip_suffix(".slice") {
        let at = rest.rfind("-pod")?;
        return canonical_uid(&rest[at + 4..]);
    }
    // cgroupfs: pod<uid>
    seg.strip_prefix("pod").and_then(canonical_uid)
}

fn container_segment(seg: &str) -> Option<(String, Option<&'static str>, bool)> {
    let base = seg.strip_suffix(".scope").unwrap_or(seg);
    for (prefix, runtime, monitor) in [
        ("cri-containerd-", Some("containerd"), false),
        ("crio-conmon-", Some("cri-o"), true),
        ("crio-", Some("cri-o"), false),
        ("docker-", Some("docker"), false),
        ("containerd-", Some("containerd"), false),
    ] {
        if let Some(id) = base.strip_prefix(prefix) {
            return is_hex_id(id).then(|| (id.to_owned(), runtime, monitor));
        }
    }
    // cgroupfs containerd/Docker: the bare ID.
    is_hex_id(base).then(|| (base.to_owned(), None, false))
}

/// Parses a cgroup path (below the cgroup v2 root); `None` when it is not a pod's.
pub fn parse(path: &str) -> Option<PodCgroup> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (i, pod_uid) = segs
        .iter()
        .enumerate()
        .find_map(|(i, s)| pod_segment(s).map(|u| (i, u)))?;
    let container = segs.get(i + 1).and_then(|s| container_segment(s));
    Some(PodCgroup {
        pod_uid,
        container_id: container.as_ref().map(|c| c.0.clone()),
        runtime: container.as_ref().and_then(|c| c.1),
        monitor: container.as_ref().is_some_and(|c| c.2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "8d9f7e1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6";
    const UID: &str = "4e2b8c1a-9f3d-4b7e-a6c5-1d2e3f4a5b6c";

    #[test]
    fn systemd_containerd() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        );
        let c = parse(&p).expect("pod path");
        assert_eq!(c.pod_uid, UID);
        assert_eq!(c.container_id.as_deref(), Some(ID));
        assert_eq!(c.runtime, Some("containerd"));
    }

    #[test]
    fn systemd_guaranteed_crio_and_its_monitor() {
        let pod = format!(
            "/kubepods.slice/kubepods-pod{}.slice",
            UID.replace('-', "_")
        );
        let c = parse(&format!("{pod}/crio-{ID}.scope")).unwrap();
        assert_eq!(
            (c.pod_uid.as_str(), c.runtime, c.monitor),
            (UID, Some("cri-o"), false)
        );
        let m = parse(&format!("{pod}/crio-conmon-{ID}.scope")).unwrap();
        assert!(m.monitor);
    }

    #[test]
    fn systemd_docker_besteffort() {
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/docker-{ID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(parse(&p).unwrap().runtime, Some("docker"));
    }

    #[test]
    fn cgroupfs_shapes() {
        let c = parse(&format!("/kubepods/burstable/pod{UID}/{ID}")).unwrap();
        assert_eq!(
            (c.pod_uid.as_str(), c.container_id.as_deref(), c.runtime),
            (UID, Some(ID), None)
        );
        let c = parse(&format!("/kubepods/pod{UID}/crio-{ID}")).unwrap();
        assert_eq!(c.runtime, Some("cri-o"));
        // The pod cgroup itself (the pause/sandbox level).
        let c = parse(&format!("/kubepods/besteffort/pod{UID}")).unwrap();
        assert_eq!(c.container_id, None);
    }

    #[test]
    fn prefixed_paths_of_kind_and_nested_runtimes() {
        let p = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(parse(&p).unwrap().pod_uid, UID);
        let p = format!("/docker/{ID}/kubepods/burstable/pod{UID}/{ID}");
        assert_eq!(parse(&p).unwrap().pod_uid, UID);
    }

    #[test]
    fn not_pods() {
        for p in [
            "/",
            "/system.slice/sshd.service",
            "/user.slice/user-0.slice/session-1.scope",
            "/kubepods.slice",
            "/kubepods/burstable",
            "/pod-not-a-uid/x",
        ] {
            assert_eq!(parse(p), None, "{p}");
        }
    }
}
