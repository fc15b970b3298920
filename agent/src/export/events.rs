//! Verdict events: newline-delimited JSON, one object per connection whose verdict
//! is `violation`, `rejected` or `permissive` (or every connection with
//! `--events-all`). Schema `mtls-auditor.event/v1`, documented in docs/observability.md.
//! Rate-limited per source workload (token bucket); each event says how many were
//! suppressed for its workload since the previous one.

use std::collections::HashMap;

use serde::Serialize;

use crate::{export::ConnectionRecord, verdict::Verdict};

pub const EVENT_SCHEMA: &str = "mtls-auditor.event/v1";

/// One verdict event.
#[derive(Debug, Clone, Serialize)]
pub struct VerdictEvent {
    pub schema: &'static str,
    /// When the connection ended (RFC 3339).
    pub time: String,
    pub verdict: Verdict,
    pub connection_security_policy: &'static str,
    pub expected_security_policy: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    /// The pods, in a cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_service: Option<String>,
    pub destination_port: u16,
    pub source_address: std::net::IpAddr,
    pub destination_address: std::net::IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_process: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_process: Option<String>,
    pub protocol: String,
    pub outcome: String,
    /// Why the verdict, naming the policy object and field.
    pub reason: String,
    /// What on the wire decided the observed class.
    pub evidence: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate_uri_sans: Option<Vec<String>>,
    /// Events of this source workload suppressed by the rate limit since the last
    /// one written.
    pub suppressed: u64,
}

fn label<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl VerdictEvent {
    pub fn new(rec: &ConnectionRecord, suppressed: u64) -> Option<Self> {
        let a = rec.assessment.as_ref()?;
        let c = &rec.classification;
        Some(Self {
            schema: EVENT_SCHEMA,
            time: rec.end.clone(),
            verdict: a.verdict,
            connection_security_policy: c.connection_security_policy.as_str(),
            expected_security_policy: a.expected_security_policy,
            source_workload: a.source_workload.clone(),
            source_workload_namespace: a.source_workload_namespace.clone(),
            destination_workload: a.destination_workload.clone(),
            destination_workload_namespace: a.destination_workload_namespace.clone(),
            source_pod: a.source_pod.clone(),
            destination_pod: a.destination_pod.clone(),
            destination_service: a.destination_service.clone(),
            destination_port: a.destination_port,
            source_address: rec.client.addr,
            destination_address: rec.server.addr,
            source_process: rec
                .client
                .local
                .as_ref()
                .and_then(|l| l.comm.as_deref().map(str::to_owned)),
            destination_process: rec
                .server
                .local
                .as_ref()
                .and_then(|l| l.comm.as_deref().map(str::to_owned)),
            protocol: label(&c.protocol),
            outcome: label(&c.outcome),
            reason: a.verdict_reason.clone(),
            evidence: c.evidence.clone(),
            tls_version: c.tls.as_ref().and_then(|t| t.version.clone()),
            sni: c.tls.as_ref().and_then(|t| t.sni.clone()),
            client_certificate_uri_sans: c
                .tls
                .as_ref()
                .and_then(|t| t.client_certificate.as_ref())
                .map(|cert| cert.uri_sans.clone()),
            suppressed,
        })
    }
}

struct Bucket {
    tokens: f64,
    last_ns: u64,
    suppressed: u64,
}

/// Which connections become events, and how many per workload.
pub struct EventPolicy {
    all: bool,
    rate_per_s: f64,
    burst: f64,
    buckets: HashMap<(String, String), Bucket>,
}

const MAX_BUCKETS: usize = 10_000;

/// What to do with one connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not an event.
    Skip,
    /// Rate-limited away.
    Suppressed,
    /// Write it, carrying the number suppressed before it.
    Emit(u64),
}

impl EventPolicy {
    pub fn new(all: bool, rate_per_s: f64, burst: u32) -> Self {
        Self {
            all,
            rate_per_s: rate_per_s.max(0.0),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Decides for `rec`, seen at monotonic time `now_ns`.
    pub fn decide(&mut self, rec: &ConnectionRecord, now_ns: u64) -> Decision {
        let Some(a) = &rec.assessment else {
            return Decision::Skip;
        };
        self.admit(
            a.verdict,
            (&a.source_workload_namespace, &a.source_workload),
            now_ns,
        )
    }

    /// The decision for a connection with `verdict` from the source workload
    /// `(namespace, name)`: a token bucket per source workload.
    fn admit(&mut self, verdict: Verdict, source: (&str, &str), now_ns: u64) -> Decision {
        let wanted = self.all
            || matches!(
                verdict,
                Verdict::Violation | Verdict::Rejected | Verdict::Permissive
            );
        if !wanted {
            return Decision::Skip;
        }
        if self.buckets.len() >= MAX_BUCKETS {
            // Forget sources that owe no suppressed count and have been quiet long
            // enough to have refilled; then any that owe none (a fresh bucket lets
            // them burst again); only then all (their suppressed counts stay in
            // events_suppressed_total).
            // Each step runs only while the table is above three quarters full, so
            // the next sources find room without another sweep.
            let low = MAX_BUCKETS * 3 / 4;
            let (rate, burst) = (self.rate_per_s, self.burst);
            self.buckets.retain(|_, b| {
                let idle_s = now_ns.saturating_sub(b.last_ns) as f64 / 1e9;
                b.suppressed > 0 || b.tokens + idle_s * rate < burst
            });
            if self.buckets.len() > low {
                self.buckets.retain(|_, b| b.suppressed > 0);
            }
            if self.buckets.len() > low {
                self.buckets.clear();
            }
        }
        let burst = self.burst;
        let b = self
            .buckets
            .entry((source.0.to_owned(), source.1.to_owned()))
            .or_insert(Bucket {
                tokens: burst,
                last_ns: now_ns,
                suppressed: 0,
            });
        let elapsed = now_ns.saturating_sub(b.last_ns) as f64 / 1e9;
        b.tokens = (b.tokens + elapsed * self.rate_per_s).min(burst);
        b.last_ns = now_ns;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            let s = b.suppressed;
            b.suppressed = 0;
            Decision::Emit(s)
        } else {
            b.suppressed += 1;
            Decision::Suppressed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn findings_are_rate_limited_per_source_and_carry_the_suppressed_count() {
        let mut p = EventPolicy::new(false, 2.0, 3);
        let b = ("default", "b");
        assert_eq!(p.admit(Verdict::Compliant, b, 0), Decision::Skip);
        assert_eq!(p.admit(Verdict::Exempt, b, 0), Decision::Skip);
        // The burst, then suppression.
        for _ in 0..3 {
            assert_eq!(p.admit(Verdict::Violation, b, 0), Decision::Emit(0));
        }
        assert_eq!(p.admit(Verdict::Rejected, b, 0), Decision::Suppressed);
        assert_eq!(p.admit(Verdict::Permissive, b, 0), Decision::Suppressed);
        // Another source has its own bucket.
        assert_eq!(
            p.admit(Verdict::Violation, ("shop", "cart"), 0),
            Decision::Emit(0)
        );
        // Half a second at 2/s refills one token: the next event says what it hid.
        assert_eq!(p.admit(Verdict::Violation, b, S / 2), Decision::Emit(2));
        assert_eq!(p.admit(Verdict::Violation, b, S / 2), Decision::Suppressed);
    }

    #[test]
    fn every_connection_with_all_and_a_full_table_keeps_owed_counts() {
        let mut p = EventPolicy::new(true, 1.0, 1);
        assert_eq!(
            p.admit(Verdict::Compliant, ("default", "b"), 0),
            Decision::Emit(0)
        );
        assert_eq!(
            p.admit(Verdict::Compliant, ("default", "b"), 0),
            Decision::Suppressed
        );
        for i in 0..MAX_BUCKETS {
            let name = format!("w{i}");
            let _ = p.admit(Verdict::Compliant, ("ns", &name), 0);
        }
        // The table filled up; b still owes its suppressed count.
        assert_eq!(
            p.admit(Verdict::Compliant, ("default", "b"), 10 * S),
            Decision::Emit(1)
        );
    }
}
