//! Reloading policy files when they change (notify) or on SIGHUP. A file with errors
//! keeps the last good policy in force; the errors are logged and counted.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
    },
    thread,
    time::Duration,
};

use notify::{RecursiveMode, Watcher as _};
use tracing::{error, info, warn};

use super::{PolicySet, Severity, load};
use crate::kube::SharedState;

/// Reload outcomes, for the log and the metrics.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

/// Why a reload happens.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    FileChanged,
    Signal,
    /// The API server's PeerAuthentications or DestinationRules changed.
    Cluster,
}

/// Loads `paths` (and, in a cluster, the API server's Istio objects and pods) into a
/// policy set, logging every warning. `Err` carries the errors.
pub fn load_set(
    paths: &[PathBuf],
    root_namespace: &str,
    cluster: Option<&SharedState>,
) -> Result<PolicySet, Vec<super::Diagnostic>> {
    let (mut files, diags) = load(paths);
    let errors: Vec<_> = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .cloned()
        .collect();
    for d in &diags {
        if d.severity == Severity::Warning {
            warn!(file = %d.file.display(), line = d.line, "{}", d.message);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // The API server's objects join the files' (same precedence rules).
    let mut synced = false;
    if let Some(c) = cluster
        && let Ok(c) = c.read()
    {
        synced = c.ready();
        let at = |kind: &str, m: &super::model::Metadata| {
            PathBuf::from(format!(
                "kubernetes:{kind}/{}/{}",
                m.namespace.as_deref().unwrap_or("default"),
                m.name
            ))
        };
        for pa in &c.peer_authentications {
            let file = at("PeerAuthentication", &pa.metadata);
            files.peer_authentications.push(super::Located {
                object: pa.clone(),
                file,
                line: 0,
            });
        }
        for dr in &c.destination_rules {
            let file = at("DestinationRule", &dr.metadata);
            files.destination_rules.push(super::Located {
                object: dr.clone(),
                file,
                line: 0,
            });
        }
        // Linkerd's kinds, the same way.
        fn add<T: Clone>(
            to: &mut Vec<super::Located<T>>,
            from: &[T],
            file: impl Fn(&T) -> PathBuf,
        ) {
            to.extend(from.iter().map(|o| super::Located {
                object: o.clone(),
                file: file(o),
                line: 0,
            }));
        }
        add(&mut files.servers, &c.servers, |o| {
            at("Server", &o.metadata)
        });
        add(
            &mut files.authorization_policies,
            &c.authorization_policies,
            |o| at("AuthorizationPolicy", &o.metadata),
        );
        add(
            &mut files.meshtls_authentications,
            &c.meshtls_authentications,
            |o| at("MeshTLSAuthentication", &o.metadata),
        );
        add(
            &mut files.network_authentications,
            &c.network_authentications,
            |o| at("NetworkAuthentication", &o.metadata),
        );
    }
    let mut set = PolicySet::new(files, root_namespace);
    set.cluster_synced = synced;
    if let Some(c) = cluster {
        let inventory = std::mem::take(&mut set.inventory).with_cluster(Arc::clone(c));
        set = set.with_inventory(inventory);
    }
    Ok(set)
}

/// Spawns the reloader. New policy sets go to `out`; send on the returned sender
/// to force a reload (SIGHUP).
pub fn spawn(
    paths: Vec<PathBuf>,
    root_namespace: String,
    cluster: Option<SharedState>,
    out: Sender<Arc<PolicySet>>,
    stats: Arc<ReloadStats>,
) -> Sender<Trigger> {
    let (tx, rx) = mpsc::channel::<Trigger>();
    let fs_tx = tx.clone();
    thread::Builder::new()
        .name("policy-reload".into())
        .spawn(move || {
            // Watch the parent directories: editors replace files by renaming.
            let watched = paths.clone();
            let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                if let Ok(ev) = ev
                    && !ev.kind.is_access()
                    && ev.paths.iter().any(|p| relevant(&watched, p))
                {
                    let _ = fs_tx.send(Trigger::FileChanged);
                }
            });
            match &mut watcher {
                Ok(w) => {
                    for p in &paths {
                        let dir = if p.is_dir() { p.clone() } else { p.parent().map_or_else(|| ".".into(), |d| d.to_path_buf()) };
                        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
                        if let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive) {
                            warn!(dir = %dir.display(), error = %e, "cannot watch policy directory; SIGHUP still reloads");
                        }
                    }
                }
                Err(e) => warn!(error = %e, "cannot watch policy files; SIGHUP still reloads"),
            }
            reload_loop(&rx, &paths, &root_namespace, cluster.as_ref(), &out, &stats);
        })
        .map_err(|e| warn!(error = %e, "cannot start the policy reloader: the policy stays as loaded"))
        .ok();
    tx
}

/// Whether a change at `changed` concerns the policy: a policy file itself (by
/// name: editors write a temporary file and rename it into place), a `*.yaml` /
/// `*.yml` in a policy directory, or the `..data` link a Kubernetes ConfigMap
/// volume swaps on update. Other files beside them (an output file) are not.
fn relevant(paths: &[PathBuf], changed: &Path) -> bool {
    let Some(name) = changed.file_name() else {
        return false;
    };
    let yaml = matches!(
        changed.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    name.to_string_lossy().starts_with("..")
        || paths.iter().any(|p| {
            if p.is_dir() {
                yaml
            } else {
                p.file_name() == Some(name)
            }
        })
}

fn reload_loop(
    rx: &Receiver<Trigger>,
    paths: &[PathBuf],
    root_namespace: &str,
    cluster: Option<&SharedState>,
    out: &Sender<Arc<PolicySet>>,
    stats: &ReloadStats,
) {
    while let Ok(first) = rx.recv() {
        // Debounce: editors write several events for one save.
        let mut trigger = first;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(t) => trigger = t,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        match load_set(paths, root_namespace, cluster) {
            Ok(set) => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
                info!(
                    ?trigger,
                    peer_authentications = set.files.peer_authentications.len(),
                    destination_rules = set.files.destination_rules.len(),
                    linkerd_objects = set.files.linkerd_object_count(),
                    "policy reloaded"
                );
                if out.send(Arc::new(set)).is_err() {
                    return;
                }
            }
            Err(errors) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                for e in &errors {
                    error!("{e}");
                }
                error!(
                    ?trigger,
                    errors = errors.len(),
                    "policy reload failed; the last good policy stays in force"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PA: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: p\n  namespace: default\nspec:\n  mtls:\n    mode: STRICT\n";

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    }

    /// `rm P; mkfifo P; kill -HUP`: the reload fails at once (a FIFO is not a
    /// regular file) instead of waiting for a writer, and the next change loads.
    #[test]
    fn a_fifo_in_place_of_a_policy_file_does_not_stall_the_reloader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("policy.yaml");
        std::fs::write(&file, PA).expect("write");
        let (tx, rx) = mpsc::channel();
        let (out_tx, out_rx) = mpsc::channel();
        let stats = Arc::new(ReloadStats::default());
        let paths = vec![file.clone()];
        let st = Arc::clone(&stats);
        let worker =
            thread::spawn(move || reload_loop(&rx, &paths, "istio-system", None, &out_tx, &st));
        let wait = Duration::from_secs(20);
        tx.send(Trigger::Signal).expect("send");
        let set = out_rx.recv_timeout(wait).expect("first load");
        assert_eq!(set.files.peer_authentications.len(), 1);

        std::fs::remove_file(&file).expect("rm");
        mkfifo(&file);
        tx.send(Trigger::Signal).expect("send");
        let deadline = std::time::Instant::now() + wait;
        while stats.failed.load(Ordering::Relaxed) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the reload of a FIFO never finished"
            );
            thread::sleep(Duration::from_millis(20));
        }
        assert!(out_rx.try_recv().is_err(), "no policy from a FIFO");

        std::fs::remove_file(&file).expect("rm");
        std::fs::write(&file, PA.replace("STRICT", "PERMISSIVE")).expect("write");
        tx.send(Trigger::Signal).expect("send");
        let set = out_rx
            .recv_timeout(wait)
            .expect("the reloader still reloads");
        assert_eq!(
            set.peer_mode("default", &Default::default(), 80).mode,
            super::super::model::PeerMode::Permissive
        );
        drop(tx);
        worker.join().expect("reloader thread");
    }

    #[test]
    fn only_policy_files_trigger_a_reload() {
        let dir = std::env::temp_dir().join(format!("mtls-auditor-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = PathBuf::from("/etc/mtls-auditor/istio.yaml");
        let paths = [file.clone(), dir.clone()];
        assert!(relevant(&paths, &file));
        assert!(relevant(&paths, Path::new("/etc/mtls-auditor/istio.yaml")));
        assert!(
            relevant(&paths, &dir.join("new.yml")),
            "a new file in a policy directory"
        );
        assert!(relevant(&paths, &dir.join("..data")), "a ConfigMap update");
        assert!(
            !relevant(&paths, &dir.join("records.jsonl")),
            "an output file beside them"
        );
        assert!(!relevant(
            &[file],
            Path::new("/etc/mtls-auditor/other.yaml")
        ));
        std::fs::remove_dir_all(&dir).ok();
    }
}
