//! Child processes started inside a namespace and cgroup, ended by PID on drop.

use std::{
    fs::{File, OpenOptions},
    io::Read as _,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    process::{Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use crate::net::{Cgroup, Netns};

/// Builder for a child process placed in a network namespace and a cgroup before it
/// executes, so the agent sees its real pid and comm from the first packet on.
pub struct Spawn {
    cmd: Command,
    netns: Option<OwnedFd>,
    cgroup: Option<OwnedFd>,
    label: String,
}

impl Spawn {
    pub fn new(program: &str) -> Self {
        let mut cmd = Command::new(program);
        cmd.stdin(Stdio::null());
        Self {
            cmd,
            netns: None,
            cgroup: None,
            label: program.to_owned(),
        }
    }

    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Self {
        self.label.push(' ');
        self.label.push_str(&a.as_ref().to_string_lossy());
        self.cmd.arg(a);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }

    pub fn current_dir(mut self, dir: &std::path::Path) -> Self {
        self.cmd.current_dir(dir);
        self
    }

    pub fn netns(mut self, ns: &Netns) -> Self {
        let f =
            File::open(ns.path()).unwrap_or_else(|e| panic!("open {}: {e}", ns.path().display()));
        self.netns = Some(f.into());
        self
    }

    pub fn cgroup(mut self, cg: &Cgroup) -> Self {
        let procs = cg.path().join("cgroup.procs");
        let f = OpenOptions::new()
            .write(true)
            .open(&procs)
            .unwrap_or_else(|e| panic!("open {}: {e}", procs.display()));
        self.cgroup = Some(f.into());
        self
    }

    pub fn stdin(mut self, s: Stdio) -> Self {
        self.cmd.stdin(s);
        self
    }

    pub fn stdout(mut self, s: Stdio) -> Self {
        self.cmd.stdout(s);
        self
    }

    pub fn stderr(mut self, s: Stdio) -> Self {
        self.cmd.stderr(s);
        self
    }

    fn prepare(&mut self) {
        let netns = self.netns.as_ref().map(|f| f.as_raw_fd());
        let cgroup = self.cgroup.as_ref().map(|f| f.as_raw_fd());
        // SAFETY: the closure only makes async-signal-safe system calls (setns,
        // write) on file descriptors opened before fork.
        unsafe {
            self.cmd.pre_exec(move || {
                if let Some(fd) = cgroup {
                    // "0" moves the writing process.
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(fd) = netns
                    && libc::setns(fd, libc::CLONE_NEWNET) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Starts the process; it is killed when the returned guard drops.
    pub fn spawn(mut self) -> Child {
        self.prepare();
        let child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning `{}`: {e}", self.label));
        Child {
            child: Some(child),
            label: self.label,
        }
    }

    /// Runs to completion with captured output; kills it after `timeout`.
    pub fn run(self, timeout: Duration) -> Output {
        let label = self.label.clone();
        let mut child = self.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
        let inner = child.inner();
        let drain = |s: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut s) = s {
                    let _ = s.read_to_end(&mut buf);
                }
                buf
            })
        };
        let out = drain(
            inner
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        );
        let err = drain(
            inner
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        );
        let status = child.wait_timeout(timeout);
        drop(child);
        let (stdout, stderr) = (
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        );
        let status = status.unwrap_or_else(|| {
            panic!(
                "`{label}` did not finish within {timeout:?}: {}",
                String::from_utf8_lossy(&stderr)
            )
        });
        Output {
            status,
            stdout,
            stderr,
        }
    }

    /// Runs to completion and panics unless it succeeded; returns stdout.
    pub fn run_ok(self, timeout: Duration) -> String {
        let label = self.label.clone();
        let out = self.run(timeout);
        crate::stdout_of_success(&out, &label)
    }
}

/// A running child process. Dropping it sends SIGKILL to its PID and reaps it.
pub struct Child {
    child: Option<std::process::Child>,
    label: String,
}

impl Child {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// `/proc/<pid>/comm`, what the kernel reports as the task name.
    pub fn comm(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/comm", self.pid()))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    pub fn inner(&mut self) -> &mut std::process::Child {
        self.child.as_mut().expect("child present")
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => return None,
            }
        }
    }

    /// Sends `signal` to this child's PID.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid();
        if pid != 0 {
            // SAFETY: signalling a child we started and have not reaped.
            unsafe { libc::kill(pid as i32, signal) };
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if !matches!(c.try_wait(), Ok(None)) {
            return;
        }
        // SIGTERM first so servers stop their own workers (nginx, postgres); SIGKILL
        // if it is still there after two seconds.
        // SAFETY: signalling our own unreaped child by PID.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if !matches!(c.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}
