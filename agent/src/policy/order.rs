//! Istio's order of objects: by `creationTimestamp` (whole seconds, as the
//! Kubernetes API keeps it), ties broken by name, then namespace (pilot's
//! `configCompareByCreationTime`). An object without a timestamp has Go's zero
//! time, which sorts before every real one; load order breaks what is left.

use std::time::UNIX_EPOCH;

use super::model::Metadata;

/// Seconds since the epoch of an RFC 3339 timestamp (UTC), or `None` when it
/// does not parse.
pub fn timestamp_seconds(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(s.trim()).ok()?;
    Some(match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    })
}

/// The sort key of an object, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AgeKey {
    /// `i64::MIN` for none (Go's zero time is older than any real time).
    seconds: i64,
    name: String,
    namespace: String,
    index: usize,
}

impl AgeKey {
    pub fn new(meta: &Metadata, index: usize) -> Self {
        Self {
            seconds: meta
                .creation_timestamp
                .as_deref()
                .and_then(timestamp_seconds)
                .unwrap_or(i64::MIN),
            name: meta.name.clone(),
            namespace: meta.ns().to_owned(),
            index,
        }
    }

    /// Strictly older in creation time (not by the tie-breaks): Go's
    /// `CreationTimestamp.Before`.
    pub fn created_before(&self, other: &Self) -> bool {
        self.seconds < other.seconds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, ns: &str, ts: Option<&str>) -> Metadata {
        Metadata {
            name: name.into(),
            namespace: Some(ns.into()),
            creation_timestamp: ts.map(str::to_owned),
            ..Metadata::default()
        }
    }

    #[test]
    fn oldest_then_name_then_namespace() {
        let mut v = [
            AgeKey::new(&meta("b", "x", Some("2020-01-01T00:00:00Z")), 0),
            AgeKey::new(&meta("a", "y", Some("2020-01-01T00:00:00.900Z")), 1),
            AgeKey::new(&meta("a", "x", Some("2020-01-01T00:00:00Z")), 2),
            AgeKey::new(&meta("z", "x", None), 3),
            AgeKey::new(&meta("c", "x", Some("2019-12-31T23:59:59Z")), 4),
        ];
        v.sort();
        let order: Vec<usize> = v.iter().map(|k| k.index).collect();
        // No timestamp first; fractions of a second do not count; then by name
        // and namespace.
        assert_eq!(order, [3, 4, 2, 1, 0]);
        assert!(!v[2].created_before(&v[3]));
        assert!(v[1].created_before(&v[2]));
    }
}
