//! Reloading policy files when they change (notify) or on SIGHUP. A file with errors
//! keeps the last good policy in force; the errors are logged and counted.

use std::{
    path::PathBuf,
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
    if let Some(c) = cluster
        && let Ok(c) = c.read()
    {
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
    }
    let mut set = PolicySet::new(files, root_namespace);
    if let Some(c) = cluster {
        set.inventory = std::mem::take(&mut set.inventory).with_cluster(Arc::clone(c));
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
            let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                if let Ok(ev) = ev
                    && !ev.kind.is_access()
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
        .ok();
    tx
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
