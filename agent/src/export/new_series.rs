//! A label set seen for the first time is exported at zero before it counts.
//!
//! Prometheus computes `increase()` and `rate()` from the samples it holds, and a
//! series whose first sample already counts one connection shows no increase: the
//! first violation on an edge nobody used before would never fire an alert. So the
//! connection and byte series of a new label set are exported at zero, and its
//! counts are withheld until every scraper seen lately has had one of its intervals
//! to read that zero. A scraper is a peer address with a user agent; its interval is
//! the gap between its last two scrapes. With no scraper known (nothing has scraped
//! twice) the counts apply at once: nobody is there to miss the zero.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

/// Scrapers tracked at most; past it a new one is not tracked (its interval is not
/// waited for).
const MAX_SCRAPERS: usize = 64;
/// Longest a count is withheld, whatever a scraper's interval.
pub const MAX_HOLD: Duration = Duration::from_secs(300);
/// Requests closer than this to the scraper's last one (a retry, or the text and
/// OpenMetrics formats fetched back to back) are the same scrape.
const SAME_SCRAPE: Duration = Duration::from_millis(100);
/// Added to the longest interval: the pipeline applies counts once a tick.
const SLACK: Duration = Duration::from_millis(200);

struct Scraper {
    last: Instant,
    interval: Option<Duration>,
}

impl Scraper {
    /// Still scraping: heard from within three of its intervals (a scraper seen
    /// once is kept for [`MAX_HOLD`], to learn its interval).
    fn active(&self, now: Instant) -> bool {
        let window = self.interval.map_or(MAX_HOLD, |i| i * 3);
        now.saturating_duration_since(self.last) <= window
    }
}

/// The scrapers of the metrics endpoint, by a hash of peer address and user agent.
#[derive(Default)]
pub struct Scrapers {
    by_key: HashMap<u64, Scraper>,
}

impl Scrapers {
    pub fn scraped(&mut self, key: u64, now: Instant) {
        self.by_key.retain(|_, s| s.active(now));
        if let Some(s) = self.by_key.get_mut(&key) {
            let gap = now.saturating_duration_since(s.last);
            if gap >= SAME_SCRAPE {
                s.interval = Some(gap.min(MAX_HOLD));
                s.last = now;
            }
        } else if self.by_key.len() < MAX_SCRAPERS {
            self.by_key.insert(
                key,
                Scraper {
                    last: now,
                    interval: None,
                },
            );
        }
    }

    /// How long a new label set stays at zero: a little more than the longest
    /// interval among the scrapers still scraping; zero when none is known.
    pub fn hold(&self, now: Instant) -> Duration {
        self.by_key
            .values()
            .filter(|s| s.active(now))
            .filter_map(|s| s.interval)
            .max()
            .map_or(Duration::ZERO, |i| (i + i / 4 + SLACK).min(MAX_HOLD))
    }
}

/// Connection and byte counts of one label set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub connections: u64,
    /// Client-to-server and server-to-client bytes, when bytes were observed.
    pub bytes: Option<(u64, u64)>,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.connections += other.connections;
        if let Some((c2s, s2c)) = other.bytes {
            let (a, b) = self.bytes.get_or_insert((0, 0));
            *a += c2s;
            *b += s2c;
        }
    }
}

struct Held {
    since: Instant,
    labels: Vec<String>,
    counts: Counts,
}

/// The label sets exported so far (by a hash of their values after capping), and
/// the counts of those still at zero.
#[derive(Default)]
pub struct Births {
    known: HashSet<u64>,
    held: HashMap<u64, Held>,
}

/// What to do with counts of a label set.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Exported before: apply them.
    Apply,
    /// New: export its series at zero now; the counts are withheld.
    ExportZero,
    /// Still at zero: the counts were added to those withheld.
    Withheld,
}

impl Births {
    /// Decides for counts of the label set `hash` (with `labels`, kept if withheld).
    pub fn admit(
        &mut self,
        hash: u64,
        labels: &[&str],
        counts: Counts,
        hold: Duration,
        now: Instant,
    ) -> Admit {
        if self.known.contains(&hash) {
            return Admit::Apply;
        }
        if let Some(h) = self.held.get_mut(&hash) {
            h.counts.add(counts);
            return Admit::Withheld;
        }
        if hold.is_zero() {
            self.known.insert(hash);
            return Admit::Apply;
        }
        self.held.insert(
            hash,
            Held {
                since: now,
                labels: labels.iter().map(|l| (*l).to_owned()).collect(),
                counts,
            },
        );
        Admit::ExportZero
    }

    /// The withheld counts whose zero has been exported for `hold` (all of them
    /// when `hold` is zero); their label sets count directly from now on.
    pub fn take_due(&mut self, hold: Duration, now: Instant) -> Vec<(Vec<String>, Counts)> {
        if self.held.is_empty() {
            return Vec::new();
        }
        let due: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| now.saturating_duration_since(h.since) >= hold)
            .map(|(k, _)| *k)
            .collect();
        due.into_iter()
            .filter_map(|k| {
                let h = self.held.remove(&k)?;
                self.known.insert(k);
                Some((h.labels, h.counts))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn a_scrapers_interval_is_learnt_from_its_second_scrape() {
        let t0 = Instant::now();
        let mut s = Scrapers::default();
        s.scraped(1, t0);
        assert_eq!(s.hold(t0), Duration::ZERO, "one scrape tells no interval");
        // The text and OpenMetrics formats fetched back to back are one scrape.
        s.scraped(1, t0 + Duration::from_millis(5));
        assert_eq!(s.hold(t0), Duration::ZERO);
        s.scraped(1, t0 + 15 * SEC);
        let hold = s.hold(t0 + 15 * SEC);
        assert!(hold > 15 * SEC && hold < 20 * SEC, "{hold:?}");
        // A faster scraper does not shorten the wait for the slower one.
        s.scraped(2, t0 + 15 * SEC);
        s.scraped(2, t0 + 16 * SEC);
        assert_eq!(s.hold(t0 + 16 * SEC), hold);
        // A scraper gone for three of its intervals no longer counts.
        assert!(s.hold(t0 + 61 * SEC) < 2 * SEC);
        assert_eq!(s.hold(t0 + 1000 * SEC), Duration::ZERO);
    }

    #[test]
    fn a_new_label_set_waits_at_zero_for_one_hold() {
        let t0 = Instant::now();
        let mut b = Births::default();
        let one = Counts {
            connections: 1,
            bytes: Some((10, 20)),
        };
        assert_eq!(b.admit(7, &["a"], one, 2 * SEC, t0), Admit::ExportZero);
        assert_eq!(b.admit(7, &["a"], one, 2 * SEC, t0 + SEC), Admit::Withheld);
        assert!(b.take_due(2 * SEC, t0 + SEC).is_empty());
        let due = b.take_due(2 * SEC, t0 + 2 * SEC);
        assert_eq!(
            due,
            vec![(
                vec!["a".to_owned()],
                Counts {
                    connections: 2,
                    bytes: Some((20, 40))
                }
            )]
        );
        assert_eq!(b.admit(7, &["a"], one, 2 * SEC, t0 + 3 * SEC), Admit::Apply);
        // With no scraper there is nobody to miss the zero.
        assert_eq!(b.admit(8, &["b"], one, Duration::ZERO, t0), Admit::Apply);
    }
}
