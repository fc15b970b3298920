//! One agent per node. Two agents would both attach their programs to the cgroup
//! root and both report every connection, doubling every count without a word, so
//! `run` takes an exclusive `flock` on a well-known file before it attaches
//! anything, writes its PID there, and holds the lock until it exits. The kernel
//! drops the lock when the process ends, however it ends (`kill -9` included), so
//! a lock file left behind never stops the next agent.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::{self, Read, Seek as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use thiserror::Error;
use tracing::warn;

/// Where the lock is unless `--instance-lock` says otherwise.
pub const DEFAULT_LOCK: &str = "/run/mtls-auditor/agent.lock";

#[derive(Debug, Error)]
pub enum InstanceError {
    #[error(
        "another mtls-auditor agent ({holder}) holds {}: two agents on one node would both attach their probes and count every connection twice; stop it first",
        path.display()
    )]
    Held { path: PathBuf, holder: String },
    #[error("--instance-lock {}: {source}", path.display())]
    Lock { path: PathBuf, source: io::Error },
    #[error("--instance-lock {}: is not a regular file", path.display())]
    NotRegular { path: PathBuf },
}

/// The lock, held while this value lives.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    pub path: PathBuf,
}

/// Takes the instance lock at `path` (default [`DEFAULT_LOCK`]). Another live agent
/// holding it is an error naming its PID. When the default path cannot be used at
/// all (no writable /run, as in some containers), that is a warning and the agent
/// runs without the lock; a path given with `--instance-lock` must work.
pub fn acquire(path: Option<&Path>) -> Result<Option<InstanceLock>, InstanceError> {
    let explicit = path.is_some();
    let path = path.unwrap_or(Path::new(DEFAULT_LOCK));
    match lock(path) {
        Ok(l) => Ok(Some(l)),
        Err(e @ InstanceError::Held { .. }) => Err(e),
        Err(e) if explicit => Err(e),
        Err(e) => {
            warn!(
                error = %e,
                "cannot take the instance lock: a second agent on this node would not be detected (use --instance-lock PATH)"
            );
            Ok(None)
        }
    }
}

fn lock(path: &Path) -> Result<InstanceLock, InstanceError> {
    let err = |source| InstanceError::Lock {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // Not through a symlink, and not truncated before the lock is ours (the PID
    // in it is the holder's).
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(err)?;
    if !file.metadata().map_err(err)?.file_type().is_file() {
        return Err(InstanceError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(InstanceError::Held {
                path: path.to_path_buf(),
                holder: holder(&file),
            });
        }
        Err(TryLockError::Error(e)) => return Err(err(e)),
    }
    file.set_len(0).map_err(err)?;
    file.rewind().map_err(err)?;
    writeln!(file, "{}", std::process::id()).map_err(err)?;
    Ok(InstanceLock {
        _file: file,
        path: path.to_path_buf(),
    })
}

/// "PID 1234", from the holder's lock file.
fn holder(file: &File) -> String {
    let mut text = String::new();
    let read = Read::take(file, 32)
        .read_to_string(&mut text)
        .map(|_| text.trim().parse::<u32>());
    match read {
        Ok(Ok(pid)) => format!("PID {pid}"),
        _ => "PID not written yet".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_and_the_lock_outlives_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/agent.lock");
        // A stale file from an agent that died: no lock on it, so no obstacle.
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(&path, "999999\n").expect("stale");
        let first = acquire(Some(&path)).expect("first").expect("held");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("{}\n", std::process::id())
        );
        // flock locks belong to the open file, so a second open in this process
        // conflicts just as another process would.
        let err = acquire(Some(&path)).expect_err("second");
        assert_eq!(
            err.to_string(),
            format!(
                "another mtls-auditor agent (PID {}) holds {}: two agents on one node would both attach their probes and count every connection twice; stop it first",
                std::process::id(),
                path.display()
            )
        );
        drop(first);
        let again = acquire(Some(&path)).expect("after release");
        assert!(again.is_some());
    }

    #[test]
    fn an_explicit_path_that_cannot_be_used_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = acquire(Some(dir.path())).expect_err("a directory");
        assert!(
            err.to_string()
                .starts_with(&format!("--instance-lock {}:", dir.path().display())),
            "{err}"
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &link).expect("symlink");
        assert!(acquire(Some(&link)).is_err(), "followed a symlink");
    }
}
