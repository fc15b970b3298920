//! Reassembly of one direction's captured prefix, as the receiving Linux kernel
//! would reassemble it.
//!
//! Chunks arrive with their stream offset. They may be out of order, overlap
//! (retransmissions, a segment repacketised, or an attacker sending two versions of
//! the same bytes) or leave holes (a lost event). The buffer is allocated once per
//! stream, sized to what was actually captured (never beyond the budget), and a
//! chunk costs a copy and an update of a short list of out-of-order blocks.
//!
//! When two segments carry different bytes for the same offsets, which copy counts
//! decides what the application read. A passive observer that keeps the wrong one
//! sees a ClientHello where the server read `GET /`, or the reverse. The rules are
//! Linux's `tcp_data_queue` and `tcp_data_queue_ofo`:
//!
//! - Bytes below the in-order point (everything contiguous from offset 0, what the
//!   kernel has already queued for the socket) never change: the first copy wins.
//! - A segment that starts at or below the in-order point and extends it is taken
//!   for its new part, also over out-of-order data queued beyond the point (the
//!   kernel delivers it first, and the queued data's overlapping head is then old).
//! - Out of order, a segment covered by a queued block is dropped; one that starts
//!   where a queued block starts and is longer replaces it; one that covers later
//!   blocks removes them; where it overlaps a block that starts earlier, that block
//!   keeps the overlap. A segment that starts exactly where a block ends is appended
//!   to it (the kernel coalesces such segments when it can, which decides later
//!   ties).
//!
//! An overlap whose bytes differ from what was already there is counted
//! ([`Overlaps`]): ordinary TCP never sends two different versions of a byte, so it
//! is evasion or corruption, and the classification made from such a stream is
//! marked with low confidence ([`flag_overlaps`]). A one-byte segment just below
//! the in-order point is a keepalive probe (some stacks fill it with a garbage
//! byte) and is not counted.
//!
//! Live, the kernel side already skips a segment that ends at or below the highest
//! offset it sent up for the socket (a retransmission): a second version that is
//! not longer than what was captured never reaches this code, which keeps the
//! first version as Linux does for in-order data, but is not counted. Only a
//! longer second version (the one that can change what the receiver reads past
//! the overlap) arrives here. `classify --pcap` sees every segment.

use crate::classify::{Classification, Confidence};

/// Overlapping segments whose bytes differed from bytes already received.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Overlaps {
    /// Segments whose overlap with bytes already held differed from them.
    pub segments: u32,
    /// Bytes that differed.
    pub bytes: u64,
    /// Stream offset of the first differing byte seen.
    pub first_offset: Option<u32>,
    /// The sender's and the receiver's captures of this direction differ (a local
    /// connection captured at both ends; only [`Overlaps::merge`] sets it).
    pub captures_differ: bool,
}

impl Overlaps {
    /// Whether any conflicting overlap was seen.
    pub fn any(&self) -> bool {
        self.segments > 0 || self.captures_differ
    }

    fn record(&mut self, offset: u32, differing: u64) {
        self.segments = self.segments.saturating_add(1);
        self.bytes = self.bytes.saturating_add(differing);
        self.first_offset = Some(self.first_offset.map_or(offset, |o| o.min(offset)));
    }

    /// Both captures of one direction: their conflicts, and whether they differ
    /// from each other where both hold bytes.
    pub fn merge(a: &Stream, b: &Stream) -> Self {
        let (x, y) = (a.overlaps, b.overlaps);
        let mut m = Self {
            segments: x.segments.saturating_add(y.segments),
            bytes: x.bytes.saturating_add(y.bytes),
            first_offset: match (x.first_offset, y.first_offset) {
                (Some(p), Some(q)) => Some(p.min(q)),
                (p, q) => p.or(q),
            },
            captures_differ: false,
        };
        if let Some(at) = first_difference(a, b) {
            m.captures_differ = true;
            m.first_offset = Some(m.first_offset.map_or(at, |o| o.min(at)));
        }
        m
    }
}

/// The first offset at which the contiguous prefixes of two captures of the same
/// direction differ. Captures anchored mid-stream are not comparable (each end
/// anchors at the first segment it saw).
pub fn first_difference(a: &Stream, b: &Stream) -> Option<u32> {
    if a.midstream || b.midstream {
        return None;
    }
    let (x, y) = (a.contiguous(), b.contiguous());
    let n = x.len().min(y.len());
    x[..n]
        .iter()
        .zip(&y[..n])
        .position(|(p, q)| p != q)
        .and_then(|i| u32::try_from(i).ok())
}

/// Marks a classification made from streams with conflicting overlaps: `low`
/// confidence, and the evidence says where (`c2s`: the client's bytes, `s2c`: the
/// server's).
pub fn flag_overlaps(cls: &mut Classification, c2s: &Overlaps, s2c: &Overlaps) {
    let mut parts = Vec::new();
    for (o, whose) in [(c2s, "client"), (s2c, "server")] {
        if !o.any() {
            continue;
        }
        let at = o
            .first_offset
            .map(|a| format!(", first at offset {a}"))
            .unwrap_or_default();
        if o.segments > 0 {
            parts.push(format!(
                "{} overlapping TCP segment(s) from the {whose} carried {} byte(s) that differ from the bytes \
                 already received{at}",
                o.segments, o.bytes
            ));
        }
        if o.captures_differ {
            parts.push(format!(
                "the {whose}'s bytes as sent and as received differ{at}"
            ));
        }
    }
    if parts.is_empty() {
        return;
    }
    cls.confidence = Confidence::Low;
    cls.evidence = format!(
        "{}; {}: the bytes the receiving kernel keeps were used, but two versions of the stream were on the \
         wire (evasion or corruption)",
        cls.evidence,
        parts.join("; ")
    );
}

/// One direction of a connection as captured.
#[derive(Debug, Default, Clone)]
pub struct Stream {
    buf: Vec<u8>,
    /// Bytes `[0, in_order)` are contiguous from the start: the kernel's `rcv_nxt`.
    in_order: u32,
    /// Out-of-order blocks beyond `in_order`, as the kernel's out-of-order queue
    /// holds them: `[start, end)`, sorted by start (blocks may overlap; each byte
    /// holds the bytes of the block that wins it).
    blocks: Vec<(u32, u32)>,
    /// More disjoint holes than [`MAX_BLOCKS`]: some segments were not kept.
    overflow: bool,
    /// Conflicting overlaps seen.
    overlaps: Overlaps,
    /// Offsets are relative to the first segment seen, not to the SYN.
    pub midstream: bool,
    /// Some segment carried more than was captured (chunk size or budget).
    pub truncated: bool,
    /// A RST travelled in this direction while it was being captured.
    pub rst: bool,
    /// Monotonic time of the first payload byte.
    pub first_ns: Option<u64>,
    /// Monotonic time of the last segment.
    pub last_ns: Option<u64>,
    /// Payload bytes seen in segments (captured or not).
    pub seen_bytes: u64,
    /// (stream offset, monotonic ns) of the first segments, ascending by offset:
    /// what orders the two directions for the classifier.
    pub chunks: Vec<(u32, u64)>,
    /// Bytes that were captured before [`Stream::release`] freed them, and whether
    /// they had a hole.
    released: u64,
    released_gap: bool,
}

/// The stream of an end that has captured nothing in either direction.
pub static EMPTY: Stream = Stream {
    buf: Vec::new(),
    in_order: 0,
    blocks: Vec::new(),
    overflow: false,
    overlaps: Overlaps {
        segments: 0,
        bytes: 0,
        first_offset: None,
        captures_differ: false,
    },
    midstream: false,
    truncated: false,
    rst: false,
    first_ns: None,
    last_ns: None,
    seen_bytes: 0,
    chunks: Vec::new(),
    released: 0,
    released_gap: false,
};

/// Segment starts remembered per stream.
const MAX_CHUNKS: usize = 64;

/// Out-of-order blocks kept per stream. Past it, blocks that touch are merged
/// (losing only the kernel's tie-break between a block and a longer one that
/// starts at the same offset); past it again, new out-of-order segments are
/// dropped and the stream reports a hole.
const MAX_BLOCKS: usize = 256;

/// Number of positions where `a` and `b` differ.
fn differing(a: &[u8], b: &[u8]) -> u64 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as u64
}

impl Stream {
    /// Adds `data` seen at `ts_ns` at stream `offset`; nothing at or beyond `limit`
    /// is kept. Returns whether the segment overlapped bytes already received with
    /// different bytes (counted in [`Stream::overlaps`]).
    pub fn insert(&mut self, offset: u32, data: &[u8], limit: u32, ts_ns: u64) -> bool {
        if data.is_empty() || offset >= limit {
            return false;
        }
        if self.chunks.len() < MAX_CHUNKS && !self.chunks.iter().any(|&(o, _)| o == offset) {
            let at = self.chunks.partition_point(|&(o, _)| o < offset);
            self.chunks.insert(at, (offset, ts_ns));
        }
        let end = offset
            .saturating_add(u32::try_from(data.len()).unwrap_or(u32::MAX))
            .min(limit);
        let data = &data[..(end - offset) as usize];
        self.grow(end, limit);
        let (s, e) = (offset, end);
        let mut diff = 0u64;
        let mut first_diff = None;
        let mut compare = |buf: &[u8], from: u32, to: u32| {
            if from < to {
                let d = differing(
                    &buf[from as usize..to as usize],
                    &data[(from - s) as usize..(to - s) as usize],
                );
                if d > 0 {
                    first_diff.get_or_insert(from);
                    diff += d;
                }
            }
        };

        // Already queued for the socket: compared, never replaced.
        let old_end = e.min(self.in_order);
        let keepalive = e - s == 1 && e == self.in_order;
        if !keepalive {
            compare(&self.buf, s, old_end);
        }
        if e > self.in_order {
            if s <= self.in_order {
                self.extend_in_order(data, s, e, &mut compare);
            } else {
                self.insert_out_of_order(data, s, e, &mut compare);
            }
        }
        match first_diff {
            Some(at) => {
                self.overlaps.record(at, diff);
                true
            }
            None => false,
        }
    }

    /// Makes the buffer hold `end` bytes: grown to what was captured, never past the
    /// budget; short connections stay small.
    fn grow(&mut self, end: u32, limit: u32) {
        if self.buf.len() < end as usize {
            let want = (end as usize)
                .next_power_of_two()
                .min(limit as usize)
                .max(end as usize);
            if self.buf.capacity() < want {
                self.buf.reserve_exact(want - self.buf.len());
            }
            self.buf.resize(end as usize, 0);
        }
    }

    /// Blocks overlapping `[from, to)`: compared with the bytes they hold there.
    fn compare_blocks(&self, from: u32, to: u32, compare: &mut impl FnMut(&[u8], u32, u32)) {
        // Blocks may overlap each other, but every covered byte holds one version:
        // compare the covered part of [from, to) once.
        let mut at = from;
        for &(bs, be) in &self.blocks {
            if bs >= to {
                break;
            }
            let (lo, hi) = (bs.max(at), be.min(to));
            if lo < hi {
                compare(&self.buf, lo, hi);
                at = hi;
            }
        }
    }

    /// A segment `[s, e)` with `s <= in_order < e`: its new part is queued in order,
    /// then every out-of-order block it reaches.
    fn extend_in_order(
        &mut self,
        data: &[u8],
        s: u32,
        e: u32,
        compare: &mut impl FnMut(&[u8], u32, u32),
    ) {
        let from = self.in_order;
        self.compare_blocks(from, e, compare);
        self.buf[from as usize..e as usize].copy_from_slice(&data[(from - s) as usize..]);
        self.in_order = e;
        // Blocks now reached are delivered in order of their start; the parts
        // already covered are old.
        let mut reached = 0;
        for &(bs, be) in &self.blocks {
            if bs > self.in_order {
                break;
            }
            self.in_order = self.in_order.max(be);
            reached += 1;
        }
        self.blocks.drain(..reached);
    }

    /// A segment `[s, e)` beyond the in-order point.
    fn insert_out_of_order(
        &mut self,
        data: &[u8],
        s: u32,
        e: u32,
        compare: &mut impl FnMut(&[u8], u32, u32),
    ) {
        // Covered by one queued block: dropped.
        if self.blocks.iter().any(|&(bs, be)| bs <= s && be >= e) {
            self.compare_blocks(s, e, compare);
            return;
        }
        // Blocks that start earlier keep what they cover.
        let reach = self
            .blocks
            .iter()
            .filter(|&&(bs, _)| bs < s)
            .map(|&(_, be)| be)
            .max();
        let wins_from = reach.unwrap_or(s).clamp(s, e);
        self.compare_blocks(s, e, compare);
        if self.blocks.len() >= MAX_BLOCKS {
            self.merge_touching_blocks();
            if self.blocks.len() >= MAX_BLOCKS {
                self.overflow = true;
                return;
            }
        }
        self.buf[wins_from as usize..e as usize].copy_from_slice(&data[(wins_from - s) as usize..]);
        // Blocks this one covers (including one that starts here and is shorter) are
        // replaced.
        self.blocks.retain(|&(bs, be)| !(bs >= s && be <= e));
        // Appended to the block that ends exactly here, when no earlier block reaches
        // past this start.
        if reach == Some(s)
            && let Some(b) = self.blocks.iter_mut().find(|b| b.1 == s && b.0 < s)
        {
            b.1 = e;
            return;
        }
        let at = self.blocks.partition_point(|&(bs, _)| bs < s);
        self.blocks.insert(at, (s, e));
    }

    /// Merges blocks that overlap or touch into one.
    fn merge_touching_blocks(&mut self) {
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(self.blocks.len());
        for &(bs, be) in &self.blocks {
            match merged.last_mut() {
                Some(last) if bs <= last.1 => last.1 = last.1.max(be),
                _ => merged.push((bs, be)),
            }
        }
        self.blocks = merged;
    }

    /// The bytes from offset 0 up to the first hole.
    pub fn contiguous(&self) -> &[u8] {
        &self.buf[..self.in_order as usize]
    }

    /// Bytes captured, holes excluded.
    pub fn captured(&self) -> u64 {
        let mut total = u64::from(self.in_order);
        let mut reach = self.in_order;
        for &(bs, be) in &self.blocks {
            let from = bs.max(reach);
            if be > from {
                total += u64::from(be - from);
                reach = be;
            }
        }
        self.released + total
    }

    /// Whether some captured bytes are not reachable from offset 0 (or some
    /// segments could not be kept).
    pub fn has_gap(&self) -> bool {
        self.released_gap || !self.blocks.is_empty() || self.overflow
    }

    /// Whether any byte was captured.
    pub fn is_empty(&self) -> bool {
        self.in_order == 0 && self.blocks.is_empty()
    }

    /// Overlapping segments whose bytes differed from bytes already received.
    pub fn overlaps(&self) -> &Overlaps {
        &self.overlaps
    }

    /// Back to a new stream for another connection, keeping the room its buffers
    /// grew to (the bytes buffer only up to `keep_bytes`).
    pub fn recycle(&mut self, keep_bytes: usize) {
        let mut buf = std::mem::take(&mut self.buf);
        if buf.capacity() > keep_bytes {
            buf = Vec::new();
        }
        let mut blocks = std::mem::take(&mut self.blocks);
        let mut chunks = std::mem::take(&mut self.chunks);
        buf.clear();
        blocks.clear();
        chunks.clear();
        *self = Self {
            buf,
            blocks,
            chunks,
            ..Self::default()
        };
    }

    /// Frees the buffer, keeping flags and counters (and the number of bytes
    /// captured).
    pub fn release(&mut self) {
        self.released = self.captured();
        self.released_gap = self.has_gap();
        self.buf = Vec::new();
        self.in_order = 0;
        self.blocks = Vec::new();
        self.chunks = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_stream_keeps_nothing_of_its_last_connection() {
        let mut s = Stream::default();
        s.insert(0, b"GET / HTTP/1.1\r\n", 4096, 1);
        s.insert(40, b"late", 4096, 2);
        s.truncated = true;
        s.seen_bytes = 99;
        s.recycle(4096);
        assert!(s.buf.capacity() > 0, "the buffer's room is kept");
        assert_eq!(s.contiguous(), b"");
        assert_eq!(s.captured(), 0);
        assert!(!s.has_gap() && !s.truncated && s.chunks.is_empty());
        assert_eq!((s.seen_bytes, s.first_ns), (0, None));
        s.insert(0, b"SSH-2.0-x", 4096, 3);
        assert_eq!(s.contiguous(), b"SSH-2.0-x");
        assert!(!s.has_gap());
        // A buffer larger than asked is not kept.
        s.recycle(4);
        assert_eq!(s.buf.capacity(), 0);
    }

    #[test]
    fn in_order_chunks_are_contiguous() {
        let mut s = Stream::default();
        s.insert(0, b"GET / ", 4096, 0);
        s.insert(6, b"HTTP/1.1\r\n", 4096, 0);
        assert_eq!(s.contiguous(), b"GET / HTTP/1.1\r\n");
        assert!(!s.has_gap());
    }

    #[test]
    fn out_of_order_chunks_fill_the_hole() {
        let mut s = Stream::default();
        s.insert(6, b"HTTP", 4096, 0);
        assert_eq!(s.contiguous(), b"");
        assert!(s.has_gap());
        s.insert(0, b"GET / ", 4096, 0);
        assert_eq!(s.contiguous(), b"GET / HTTP");
        assert!(!s.has_gap());
    }

    #[test]
    fn retransmissions_and_overlaps_are_idempotent() {
        let mut s = Stream::default();
        assert!(!s.insert(0, b"abcdef", 4096, 0));
        assert!(!s.insert(2, b"cdefgh", 4096, 0));
        assert!(!s.insert(0, b"abc", 4096, 0));
        assert_eq!(s.contiguous(), b"abcdefgh");
        assert_eq!(s.captured(), 8);
        assert!(!s.overlaps().any());
    }

    #[test]
    fn nothing_is_kept_past_the_limit() {
        let mut s = Stream::default();
        s.insert(0, b"0123456789", 4, 0);
        assert_eq!(s.contiguous(), b"0123");
        s.insert(8, b"zz", 4, 0);
        assert_eq!(s.captured(), 4);
    }

    #[test]
    fn three_ranges_merge_into_one() {
        let mut s = Stream::default();
        s.insert(10, b"k", 64, 0);
        s.insert(4, b"e", 64, 0);
        s.insert(0, b"abcd", 64, 0);
        s.insert(5, b"fghij", 64, 0);
        assert_eq!(s.contiguous(), b"abcdefghijk");
        assert!(!s.has_gap());
    }

    #[test]
    fn in_order_bytes_keep_the_first_copy_and_a_conflict_is_counted() {
        let mut s = Stream::default();
        let hello = b"\x16\x03\x01\x00\x05hello";
        assert!(!s.insert(0, hello, 4096, 0));
        // Different bytes at the same offsets, longer: the old part stays, the tail
        // is new data.
        assert!(s.insert(0, b"GET / HTTP/1.1\r\n", 4096, 0));
        assert_eq!(&s.contiguous()[..hello.len()], hello);
        assert_eq!(
            &s.contiguous()[hello.len()..],
            &b"GET / HTTP/1.1\r\n"[hello.len()..]
        );
        let o = s.overlaps();
        assert_eq!(o.segments, 1);
        assert_eq!(o.first_offset, Some(0));
        assert_eq!(o.bytes, differing(hello, b"GET / HTTP/"));
        // The reverse order keeps the request.
        let mut r = Stream::default();
        r.insert(0, b"GET / HTTP/1.1\r\n", 4096, 0);
        assert!(r.insert(0, hello, 4096, 0));
        assert_eq!(r.contiguous(), b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn in_order_data_wins_over_queued_out_of_order_bytes() {
        let mut s = Stream::default();
        s.insert(4, b"XXXXYY", 64, 0);
        // The in-order segment covers [0, 8): delivered first, so [4, 8) is its.
        assert!(s.insert(0, b"abcdefgh", 64, 0));
        assert_eq!(s.contiguous(), b"abcdefghYY");
        assert!(!s.has_gap());
    }

    #[test]
    fn out_of_order_a_covered_segment_is_dropped() {
        let mut s = Stream::default();
        s.insert(4, b"efghij", 64, 0);
        assert!(s.insert(6, b"XX", 64, 0));
        s.insert(0, b"abcd", 64, 0);
        assert_eq!(s.contiguous(), b"abcdefghij");
    }

    #[test]
    fn out_of_order_a_longer_segment_at_the_same_start_replaces() {
        let mut s = Stream::default();
        s.insert(4, b"efgh", 64, 0);
        assert!(s.insert(4, b"EFGHIJ", 64, 0));
        s.insert(0, b"abcd", 64, 0);
        assert_eq!(s.contiguous(), b"abcdEFGHIJ");
    }

    #[test]
    fn out_of_order_an_earlier_start_keeps_the_overlap() {
        let mut s = Stream::default();
        s.insert(4, b"efgh", 64, 0);
        // Starts inside the queued block: the block keeps [6, 8).
        assert!(s.insert(6, b"XXij", 64, 0));
        // Starts before the queued block and ends inside it: the new one wins [3, 5),
        // as the kernel delivers it first.
        assert!(s.insert(3, b"DE", 64, 0));
        s.insert(0, b"abc", 64, 0);
        assert_eq!(s.contiguous(), b"abcDEfghij");
    }

    #[test]
    fn out_of_order_a_segment_covering_blocks_replaces_them() {
        let mut s = Stream::default();
        s.insert(6, b"gh", 64, 0);
        s.insert(10, b"kl", 64, 0);
        assert!(s.insert(5, b"FGHIJKLM", 64, 0));
        s.insert(0, b"abcde", 64, 0);
        assert_eq!(s.contiguous(), b"abcdeFGHIJKLM");
    }

    #[test]
    fn out_of_order_adjacent_segments_coalesce_and_decide_later_ties() {
        let mut s = Stream::default();
        s.insert(4, b"efgh", 64, 0);
        s.insert(8, b"ijkl", 64, 0);
        // [4, 12) is one block now: a segment starting at 4 and ending inside it is
        // covered.
        assert!(s.insert(4, b"EFGHIJ", 64, 0));
        s.insert(0, b"abcd", 64, 0);
        assert_eq!(s.contiguous(), b"abcdefghijkl");
    }

    #[test]
    fn a_keepalive_byte_is_not_a_conflict() {
        let mut s = Stream::default();
        s.insert(0, b"abcd", 64, 0);
        assert!(!s.insert(3, b"\0", 64, 0));
        assert_eq!(s.contiguous(), b"abcd");
        assert!(!s.overlaps().any());
    }

    #[test]
    fn captured_counts_overlapping_blocks_once() {
        let mut s = Stream::default();
        s.insert(10, b"0123456789", 64, 0);
        s.insert(15, b"0123456789", 64, 0);
        assert_eq!(s.captured(), 15);
        s.insert(0, b"0123456789", 64, 0);
        assert_eq!(s.captured(), 25);
        assert_eq!(s.contiguous().len(), 25);
    }

    #[test]
    fn too_many_holes_are_reported_not_kept() {
        let mut s = Stream::default();
        for i in 0..(MAX_BLOCKS as u32 + 10) {
            s.insert(2 + i * 2, b"x", 1 << 20, 0);
        }
        assert!(s.has_gap());
        assert!(s.blocks.len() <= MAX_BLOCKS);
        s.insert(0, b"ab", 1 << 20, 0);
        assert!(
            s.has_gap(),
            "segments were dropped: the stream stays incomplete"
        );
    }

    #[test]
    fn released_streams_keep_their_counters() {
        let mut s = Stream::default();
        s.insert(0, b"abcd", 64, 0);
        s.insert(0, b"wxyz", 64, 0);
        s.release();
        assert_eq!(s.captured(), 4);
        assert!(s.contiguous().is_empty());
        assert_eq!(s.overlaps().segments, 1);
    }

    /// Segments of one true stream in any order, overlapping or repeated, rebuild
    /// it exactly once every byte is covered, with no conflict.
    #[test]
    fn any_order_of_consistent_segments_rebuilds_the_stream() {
        let truth: Vec<u8> = (0..600u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u32| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % u64::from(n)) as u32
        };
        for _ in 0..300 {
            let mut s = Stream::default();
            let mut covered = vec![false; truth.len()];
            while !covered.iter().all(|&c| c) {
                let start = next(truth.len() as u32);
                let len = 1 + next(80);
                let end = (start + len).min(truth.len() as u32);
                assert!(!s.insert(start, &truth[start as usize..end as usize], 4096, 0));
                covered[start as usize..end as usize].fill(true);
                let prefix = covered.iter().take_while(|&&c| c).count();
                assert_eq!(s.contiguous(), &truth[..prefix]);
                assert_eq!(s.captured(), covered.iter().filter(|&&c| c).count() as u64);
            }
            assert!(!s.has_gap());
            assert!(!s.overlaps().any());
        }
    }

    /// A second, deliberately naive model of Linux's receive path: segments kept
    /// whole in an out-of-order list (as `sk_buff`s), delivered byte by byte when
    /// `rcv_nxt` reaches them.
    #[derive(Default)]
    struct LinuxModel {
        delivered: Vec<u8>,
        ofo: Vec<(u32, Vec<u8>)>,
    }

    impl LinuxModel {
        fn rcv_nxt(&self) -> u32 {
            self.delivered.len() as u32
        }

        fn segment(&mut self, s: u32, d: &[u8]) {
            let e = s + d.len() as u32;
            let end = |(start, data): &(u32, Vec<u8>)| start + data.len() as u32;
            if e <= self.rcv_nxt() {
                return;
            }
            if s <= self.rcv_nxt() {
                // tcp_data_queue: in order (maybe partly old), then tcp_ofo_queue.
                let skip = (self.rcv_nxt() - s) as usize;
                self.delivered.extend_from_slice(&d[skip..]);
                self.ofo.sort_by_key(|x| x.0);
                while let Some(i) = self.ofo.iter().position(|x| x.0 <= self.rcv_nxt()) {
                    let x = self.ofo.remove(i);
                    if end(&x) > self.rcv_nxt() {
                        let skip = (self.rcv_nxt() - x.0) as usize;
                        self.delivered.extend_from_slice(&x.1[skip..]);
                    }
                }
                return;
            }
            // tcp_data_queue_ofo.
            if self.ofo.iter().any(|x| x.0 <= s && end(x) >= e) {
                return;
            }
            self.ofo.retain(|x| !(x.0 >= s && end(x) <= e));
            let reach = self.ofo.iter().filter(|x| x.0 < s).map(end).max();
            if reach == Some(s)
                && let Some(x) = self.ofo.iter_mut().find(|x| end(x) == s)
            {
                x.1.extend_from_slice(d);
                return;
            }
            self.ofo.push((s, d.to_vec()));
        }
    }

    /// Overlapping segments with different bytes, in random order: the stream keeps
    /// what the model delivers, and every conflicting overlap is counted.
    #[test]
    fn conflicting_segments_are_reassembled_as_linux_delivers_them() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u32| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % u64::from(n)) as u32
        };
        for round in 0..2000 {
            let mut s = Stream::default();
            let mut m = LinuxModel::default();
            let mut covered = [false; 72];
            for k in 0..(2 + next(12)) {
                let start = next(48);
                let len = 1 + next(24);
                // Each segment carries its own byte: any overlap differs.
                let fill = (round * 31 + k as usize * 7) as u8 | 1;
                let data = vec![fill; len as usize];
                let range = start as usize..(start + len) as usize;
                let keepalive = len == 1 && start + 1 == s.contiguous().len() as u32;
                let overlap = covered[range.clone()].iter().any(|&c| c) && !keepalive;
                covered[range].fill(true);
                assert_eq!(
                    s.insert(start, &data, 4096, 0),
                    overlap,
                    "round {round}, segment {k}"
                );
                m.segment(start, &data);
                assert_eq!(
                    s.contiguous(),
                    &m.delivered[..],
                    "round {round}, segment {k} at {start}+{len}"
                );
            }
        }
    }

    #[test]
    fn captures_that_differ_are_an_anomaly() {
        let mut sent = Stream::default();
        let mut received = Stream::default();
        sent.insert(0, b"\x16\x03\x01hello", 64, 0);
        received.insert(0, b"GET / HTTP/1.1", 64, 0);
        let o = Overlaps::merge(&sent, &received);
        assert!(o.captures_differ);
        assert_eq!(o.first_offset, Some(0));
        let same = Overlaps::merge(&sent, &sent.clone());
        assert!(!same.any());
        // Offsets of streams anchored mid-stream do not line up.
        received.midstream = true;
        assert!(!Overlaps::merge(&sent, &received).any());
    }
}
