//! A small client of Prometheus' HTTP API: instant and range queries, each with a
//! deadline (the client's, and the same `timeout` asked of Prometheus), answers
//! capped in size and checked to be what Prometheus sends, so that a wrong URL, a
//! server that never answers or a refused query is an error that says which.

use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use super::answer::{self, Answer};
pub use super::answer::{Sample, Series};

/// Answers larger than this are refused (a week of a large cluster's series fits).
const MAX_ANSWER: u64 = 256 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum PromError {
    #[error("--prometheus {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach Prometheus at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "Prometheus at {url} did not answer within {} ({what}); raise --timeout or shorten --since",
        humantime::format_duration(*.timeout)
    )]
    Timeout {
        url: String,
        timeout: Duration,
        what: String,
    },
    #[error("{url} does not answer like a Prometheus HTTP API: {what} answered {detail}")]
    NotPrometheus {
        url: String,
        what: String,
        detail: String,
    },
    #[error("Prometheus at {url} failed the {what} query ({error_type}): {error}")]
    Query {
        url: String,
        what: String,
        error_type: String,
        error: String,
    },
}

/// The client.
pub struct Prometheus {
    base: String,
    agent: ureq::Agent,
    timeout: Duration,
    /// Warnings Prometheus attached to answers, for the report's notes.
    pub warnings: Vec<String>,
}

/// Checks and normalises `--prometheus`: `http://host[:port][/prefix]`.
pub fn base_url(url: &str) -> Result<String, PromError> {
    let bad = |reason: &str| PromError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    if url.starts_with("https://") {
        return Err(bad(
            "https is not supported by this build (it has no TLS client); reach Prometheus over http, e.g. `kubectl port-forward`",
        ));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(bad("expected http://HOST[:PORT][/PATH]"));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("no host"));
    }
    if rest.contains(['?', '#']) {
        return Err(bad(
            "a query or fragment has no place in the base URL; give Prometheus' address (and path prefix) only",
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

impl Prometheus {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, PromError> {
        let base = base_url(url)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .user_agent(concat!("mtls-auditor/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Self {
            base,
            agent,
            timeout,
            warnings: Vec::new(),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// POSTs a form to `path` (long queries do not fit every proxy's URL limit) and
    /// returns the decoded answer's data.
    fn call(
        &mut self,
        path: &str,
        form: &[(&str, String)],
        what: &str,
    ) -> Result<answer::Result, PromError> {
        let url = format!("{}{path}", self.base);
        let mut form: Vec<(&str, String)> = form.to_vec();
        // Prometheus stops the query itself a little before we give up on it.
        form.push((
            "timeout",
            seconds(self.timeout.saturating_sub(Duration::from_secs(1))),
        ));
        let resp = self
            .agent
            .post(&url)
            .send_form(form.iter().map(|(k, v)| (*k, v.as_str())))
            .map_err(|e| self.transport_error(e, what))?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = resp
            .into_body()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_string()
            .map_err(|e| self.transport_error(e, what))?;
        let answer: Answer = match answer::decode(&body) {
            Ok(a) => a,
            Err(_) => {
                let mut snippet: String = body.chars().take(80).collect();
                snippet = snippet.split_whitespace().collect::<Vec<_>>().join(" ");
                return Err(PromError::NotPrometheus {
                    url: self.base.clone(),
                    what: format!("POST {path}"),
                    detail: format!(
                        "HTTP {status} {}{}",
                        if content_type.is_empty() {
                            "without a content type".to_owned()
                        } else {
                            content_type
                        },
                        if snippet.is_empty() {
                            String::new()
                        } else {
                            format!(": {snippet}")
                        }
                    ),
                });
            }
        };
        self.warnings.extend(answer.warnings);
        if !answer.success {
            let error_type = answer.error_type.unwrap_or_else(|| "error".into());
            let error = answer.error.unwrap_or_default();
            if error_type == "timeout" || error.contains("context deadline exceeded") {
                return Err(PromError::Timeout {
                    url: self.base.clone(),
                    timeout: self.timeout,
                    what: format!("the {what} query, stopped by Prometheus"),
                });
            }
            return Err(PromError::Query {
                url: self.base.clone(),
                what: what.to_owned(),
                error_type,
                error,
            });
        }
        answer.result.ok_or_else(|| PromError::NotPrometheus {
            url: self.base.clone(),
            what: format!("POST {path}"),
            detail: format!("HTTP {status} with status success but no data"),
        })
    }

    fn transport_error(&self, e: ureq::Error, what: &str) -> PromError {
        let url = self.base.clone();
        match e {
            ureq::Error::Timeout(_) => PromError::Timeout {
                url,
                timeout: self.timeout,
                what: format!("the {what} query"),
            },
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                PromError::Timeout {
                    url,
                    timeout: self.timeout,
                    what: format!("the {what} query"),
                }
            }
            ureq::Error::HostNotFound => PromError::Unreachable {
                url,
                reason: "host not found".into(),
            },
            ureq::Error::Io(io) => PromError::Unreachable {
                url,
                reason: io.to_string(),
            },
            ureq::Error::BodyExceedsLimit(n) => PromError::NotPrometheus {
                url,
                what: format!("the {what} query"),
                detail: format!("more than {n} bytes"),
            },
            ureq::Error::Protocol(p) => PromError::NotPrometheus {
                url,
                what: format!("the {what} query"),
                detail: format!("something that is not HTTP/1.1 ({p})"),
            },
            other => PromError::Unreachable {
                url,
                reason: other.to_string(),
            },
        }
    }

    /// An instant query at `time` (unix seconds). `what` names it in errors.
    pub fn instant(
        &mut self,
        query: &str,
        time: f64,
        what: &str,
    ) -> Result<Vec<Sample>, PromError> {
        let form = [("query", query.to_owned()), ("time", format!("{time:.3}"))];
        match self.call("/api/v1/query", &form, what)? {
            answer::Result::Vector(v) => Ok(v),
            answer::Result::Scalar(s) => Ok(vec![s]),
            _ => Err(self.wrong_shape(what, "a range or string result")),
        }
    }

    /// A range query over `[start, end]` every `step`.
    pub fn range(
        &mut self,
        query: &str,
        start: f64,
        end: f64,
        step: Duration,
        what: &str,
    ) -> Result<Vec<Series>, PromError> {
        let form = [
            ("query", query.to_owned()),
            ("start", format!("{start:.3}")),
            ("end", format!("{end:.3}")),
            ("step", seconds(step)),
        ];
        match self.call("/api/v1/query_range", &form, what)? {
            answer::Result::Matrix(m) => Ok(m),
            _ => Err(self.wrong_shape(what, "no matrix")),
        }
    }

    fn wrong_shape(&self, what: &str, got: &str) -> PromError {
        PromError::NotPrometheus {
            url: self.base.clone(),
            what: format!("the {what} query"),
            detail: got.to_owned(),
        }
    }

    /// Asks `vector(1)`: anything but Prometheus' answer to it means the URL is not
    /// a Prometheus API (or not one that evaluates PromQL).
    pub fn check(&mut self, time: f64) -> Result<(), PromError> {
        let v = self.instant("vector(1)", time, "vector(1) check")?;
        if v.len() == 1 && v[0].value == 1.0 {
            Ok(())
        } else {
            Err(self.wrong_shape("vector(1) check", "something other than one sample of 1"))
        }
    }

    /// Prometheus' version from /api/v1/status/buildinfo, when it serves one
    /// (compatible servers may not).
    pub fn version(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Build {
            data: BuildData,
        }
        #[derive(Deserialize)]
        struct BuildData {
            version: String,
        }
        let resp = self
            .agent
            .get(&format!("{}/api/v1/status/buildinfo", self.base))
            .call()
            .ok()?;
        if resp.status().as_u16() != 200 {
            return None;
        }
        let body = resp
            .into_body()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .ok()?;
        serde_json::from_str::<Build>(&body)
            .ok()
            .map(|b| b.data.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(
            base_url("http://prom:9090/").ok().as_deref(),
            Some("http://prom:9090")
        );
        assert_eq!(
            base_url("http://h/prometheus").ok().as_deref(),
            Some("http://h/prometheus")
        );
        for bad in [
            "prom:9090",
            "https://prom",
            "http://",
            "http:///x",
            "http://h/?q=1",
        ] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
    }
}
