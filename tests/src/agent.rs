//! The agent under test: started as a real process, its JSON lines collected.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

pub use serde_json::Value as Record;

use crate::agent_bin;

#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// A command the agent runs under (`wrapper... mtls-auditor run ...`); it must
    /// `exec` the agent so the agent keeps its PID.
    pub wrapper: Vec<String>,
}

impl AgentOptions {
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
}

/// A running `mtls-auditor run`. Dropping it kills the agent (by PID) if it still runs.
pub struct Agent {
    child: Option<std::process::Child>,
    records: Arc<Mutex<Vec<Record>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
}

/// What a stopped agent left behind.
pub struct AgentExit {
    pub status: std::process::ExitStatus,
    pub records: Vec<Record>,
    pub stderr: String,
}

impl Agent {
    /// Starts the agent and waits until it reports that its probes are attached.
    /// Panics with the agent's own error if it cannot load them: with or without
    /// `CI`, a test that cannot load the probes fails.
    pub fn start(opts: AgentOptions) -> Self {
        let mut cmd = match opts.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(agent_bin());
                c
            }
            None => Command::new(agent_bin()),
        };
        cmd.arg("run")
            .arg("--stats-interval-s")
            .arg("0")
            .args(&opts.args);
        cmd.env("MTLS_AUDITOR_LOG", "info");
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", agent_bin().display()));
        let records = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let r = Arc::clone(&records);
        let t1 = thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                match serde_json::from_str::<Record>(&line) {
                    Ok(v) => r.lock().expect("records lock").push(v),
                    Err(e) => panic!("agent wrote a line that is not JSON ({e}): {line}"),
                }
            }
        });
        let s = Arc::clone(&stderr);
        let t2 = thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = s.lock().expect("stderr lock");
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut agent = Self {
            child: Some(child),
            records,
            stderr,
            readers: vec![t1, t2],
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if agent.stderr().contains("ready: reporting connections") {
                break;
            }
            let exited = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                // Let the reader thread collect the last lines.
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "the agent could not load its probes ({status}); it said:\n{}",
                    agent.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not become ready within 30 s; it said:\n{}",
                agent.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.lock().expect("records lock").clone()
    }

    /// Waits until at least `n` records satisfy `pred`; returns them. Panics with the
    /// agent's log on timeout.
    pub fn wait_records(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Record) -> bool,
    ) -> Vec<Record> {
        let found = crate::wait_for(timeout, || {
            let matching: Vec<Record> = self.records().into_iter().filter(|r| pred(r)).collect();
            (matching.len() >= n).then_some(matching)
        });
        found.unwrap_or_else(|| {
            let all = self.records();
            panic!(
                "expected {n} matching records within {timeout:?}; got {} records in all:\n{}\nagent log:\n{}",
                all.len(),
                all.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n"),
                self.stderr()
            )
        })
    }

    /// Sends `signal` (SIGINT by default) and waits for the agent to exit.
    pub fn stop_with(mut self, signal: i32) -> AgentExit {
        let mut child = self.child.take().expect("agent running");
        // SAFETY: signalling the agent process we started.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the agent did not exit within 20 s of signal {signal}:\n{}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        for t in self.readers.drain(..) {
            let _ = t.join();
        }
        AgentExit {
            status,
            records: self.records(),
            stderr: self.stderr(),
        }
    }

    pub fn stop(self) -> AgentExit {
        self.stop_with(libc::SIGINT)
    }

    /// Stops with SIGINT and asserts a clean exit without a panic.
    pub fn stop_cleanly(self) -> AgentExit {
        let exit = self.stop();
        assert!(
            exit.status.success() && !exit.stderr.contains("panicked"),
            "agent exit {}: {}",
            exit.status,
            exit.stderr
        );
        exit
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Names of loaded BPF programs that are ours (`mtls_` prefix).
pub fn our_loaded_programs() -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_owned))
        .filter(|n| n.starts_with("mtls_"))
        .collect()
}
