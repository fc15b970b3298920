//! IPv4 and IPv6 fragment reassembly for offline captures (the live agent sees
//! reassembled packets: the kernel has already put them together).
//!
//! Each packet being put together is a zeroed buffer and a list of the byte
//! ranges filled; overlapping fragments keep the bytes that came first (as Linux
//! does). At most [`MAX_OPEN`] packets are open at once, none for longer than
//! [`MAX_AGE_NS`] of capture time, none larger than 64 KiB.

use std::{collections::HashMap, net::IpAddr};

use super::ip::FragInfo;

/// Packets being put together at once; the oldest is dropped beyond this.
pub const MAX_OPEN: usize = 4096;
/// A packet whose fragments span more capture time than this is dropped (Linux's
/// default `ipfrag_time` is 30 s).
pub const MAX_AGE_NS: u64 = 60_000_000_000;
/// The largest payload an IP header can describe.
const MAX_PAYLOAD: usize = 65_535;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    id: u32,
    proto: u8,
    /// How deep in tunnels the packet sits, so an inner and an outer packet never mix.
    depth: u8,
}

#[derive(Debug, Default)]
struct Partial {
    data: Vec<u8>,
    /// Filled `[start, end)` ranges, sorted and disjoint.
    filled: Vec<(usize, usize)>,
    /// The payload's length, once the last fragment arrived.
    end: Option<usize>,
    first_ts: u64,
}

impl Partial {
    /// Adds a fragment; false if it contradicts what is known (an end that moves,
    /// data past the end, more than 64 KiB).
    fn add(&mut self, offset: usize, more: bool, bytes: &[u8]) -> bool {
        let stop = offset + bytes.len();
        if stop > MAX_PAYLOAD || (more && !bytes.len().is_multiple_of(8)) {
            return false;
        }
        match (self.end, more) {
            (Some(end), _) if stop > end || (!more && stop != end) => return false,
            (None, false) => {
                if self.filled.last().is_some_and(|&(_, e)| e > stop) {
                    return false;
                }
                self.end = Some(stop);
            }
            _ => {}
        }
        if self.data.len() < stop {
            self.data.resize(stop, 0);
        }
        // Copy only what no earlier fragment covered.
        let mut at = offset;
        for &(s, e) in &self.filled {
            if e <= at || s >= stop {
                continue;
            }
            if s > at {
                self.data[at..s].copy_from_slice(&bytes[at - offset..s - offset]);
            }
            at = at.max(e);
        }
        if at < stop {
            self.data[at..stop].copy_from_slice(&bytes[at - offset..]);
        }
        self.filled.push((offset, stop));
        self.filled.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(self.filled.len());
        for &(s, e) in &self.filled {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.filled = merged;
        true
    }

    fn complete(&self) -> bool {
        matches!((self.end, self.filled.as_slice()), (Some(end), [(0, e)]) if *e == end)
    }
}

/// A reassembled IP payload.
#[derive(Debug)]
pub struct Whole {
    pub proto: u8,
    pub payload: Vec<u8>,
}

/// What adding a fragment did.
#[derive(Debug)]
pub enum Added {
    /// Waiting for more fragments.
    Pending,
    Complete(Whole),
    /// The fragment contradicts the others or is too large: the packet is dropped.
    Invalid,
}

#[derive(Debug, Default)]
pub struct Defrag {
    open: HashMap<Key, Partial>,
    /// Packets dropped unfinished (evicted, expired) so far.
    pub abandoned: u64,
}

impl Defrag {
    /// Adds the fragment `f` of a packet from `src` to `dst` whose payload is of
    /// protocol `proto`.
    #[expect(
        clippy::too_many_arguments,
        reason = "the fragment's identity as the IP layer decoded it, passed as is"
    )]
    pub fn add(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        depth: u8,
        f: FragInfo,
        bytes: &[u8],
        ts: u64,
    ) -> Added {
        let key = Key {
            src,
            dst,
            id: f.id,
            proto,
            depth,
        };
        if !self.open.contains_key(&key) {
            self.expire(ts);
            if self.open.len() >= MAX_OPEN {
                self.evict_oldest();
            }
            self.open.insert(
                key,
                Partial {
                    first_ts: ts,
                    ..Partial::default()
                },
            );
        }
        let Some(p) = self.open.get_mut(&key) else {
            return Added::Invalid;
        };
        if !p.add(f.offset, f.more, bytes) {
            self.open.remove(&key);
            return Added::Invalid;
        }
        if !p.complete() {
            return Added::Pending;
        }
        match self.open.remove(&key) {
            Some(p) => Added::Complete(Whole {
                proto,
                payload: p.data,
            }),
            None => Added::Invalid,
        }
    }

    /// Packets still waiting for fragments.
    pub fn pending(&self) -> usize {
        self.open.len()
    }

    fn expire(&mut self, now: u64) {
        let before = self.open.len();
        self.open
            .retain(|_, p| now.saturating_sub(p.first_ts) <= MAX_AGE_NS);
        self.abandoned += (before - self.open.len()) as u64;
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .open
            .iter()
            .min_by_key(|(_, p)| p.first_ts)
            .map(|(k, _)| *k);
        if let Some(k) = oldest {
            self.open.remove(&k);
            self.abandoned += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(d: &mut Defrag, id: u32, offset: usize, more: bool, bytes: &[u8], ts: u64) -> Added {
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        d.add(a, b, 6, 0, FragInfo { id, offset, more }, bytes, ts)
    }

    #[test]
    fn out_of_order_fragments_make_one_packet() {
        let data: Vec<u8> = (0..40u8).collect();
        let mut d = Defrag::default();
        assert!(matches!(
            add(&mut d, 7, 24, false, &data[24..], 1),
            Added::Pending
        ));
        assert!(matches!(
            add(&mut d, 7, 0, true, &data[..16], 2),
            Added::Pending
        ));
        match add(&mut d, 7, 16, true, &data[16..24], 3) {
            Added::Complete(w) => {
                assert_eq!(w.payload, data);
                assert_eq!(w.proto, 6);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn overlaps_keep_the_first_bytes_and_contradictions_drop_the_packet() {
        let mut d = Defrag::default();
        assert!(matches!(
            add(&mut d, 1, 0, true, &[1; 16], 0),
            Added::Pending
        ));
        // Overlapping bytes 8..16 arrive again with other values: the first stay.
        match add(&mut d, 1, 8, false, &[2; 16], 1) {
            Added::Complete(w) => {
                assert_eq!(&w.payload[..16], &[1; 16]);
                assert_eq!(&w.payload[16..], &[2; 8]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            add(&mut d, 2, 0, false, &[0; 8], 0),
            Added::Complete(_)
        ));
        assert!(matches!(
            add(&mut d, 3, 16, false, &[0; 8], 0),
            Added::Pending
        ));
        assert!(
            matches!(add(&mut d, 3, 24, false, &[0; 8], 0), Added::Invalid),
            "a second end"
        );
        assert!(
            matches!(add(&mut d, 4, 0, true, &[0; 7], 0), Added::Invalid),
            "unaligned"
        );
        assert!(
            matches!(add(&mut d, 5, 65_528, true, &[0; 16], 0), Added::Invalid),
            "past 64 KiB"
        );
    }

    #[test]
    fn old_and_excess_packets_are_abandoned() {
        let mut d = Defrag::default();
        add(&mut d, 1, 0, true, &[0; 8], 0);
        add(&mut d, 2, 0, true, &[0; 8], MAX_AGE_NS + 1);
        assert_eq!(d.pending(), 1);
        assert_eq!(d.abandoned, 1);
        for id in 3..(3 + MAX_OPEN as u32) {
            add(&mut d, id, 0, true, &[0; 8], MAX_AGE_NS + 2);
        }
        assert_eq!(d.pending(), MAX_OPEN);
        assert_eq!(d.abandoned, 2);
    }
}
