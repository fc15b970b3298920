//! Reassembly of one direction's captured prefix.
//!
//! Chunks arrive with their stream offset. They may be out of order, overlap
//! (retransmissions, the same bytes seen at both ends of a local connection) or
//! leave holes (a lost event). The buffer is allocated once per stream, sized to
//! what was actually captured (never beyond the budget), and a chunk costs a copy
//! and an update of a short list of covered ranges.

/// One direction of a connection as captured.
#[derive(Debug, Default, Clone)]
pub struct Stream {
    buf: Vec<u8>,
    /// Covered `[start, end)` ranges, sorted and disjoint.
    ranges: Vec<(u32, u32)>,
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

/// Segment starts remembered per stream.
const MAX_CHUNKS: usize = 64;

impl Stream {
    /// Adds `data` seen at `ts_ns` at stream `offset`; nothing at or beyond `limit`
    /// is kept.
    pub fn insert(&mut self, offset: u32, data: &[u8], limit: u32, ts_ns: u64) {
        if data.is_empty() || offset >= limit {
            return;
        }
        if self.chunks.len() < MAX_CHUNKS && !self.chunks.iter().any(|&(o, _)| o == offset) {
            let at = self.chunks.partition_point(|&(o, _)| o < offset);
            self.chunks.insert(at, (offset, ts_ns));
        }
        let end = offset
            .saturating_add(u32::try_from(data.len()).unwrap_or(u32::MAX))
            .min(limit);
        let n = (end - offset) as usize;
        if self.buf.len() < end as usize {
            // Grow to what was captured, never past the budget; short connections
            // stay small.
            let want = (end as usize)
                .next_power_of_two()
                .min(limit as usize)
                .max(end as usize);
            if self.buf.capacity() < want {
                self.buf.reserve_exact(want - self.buf.len());
            }
            self.buf.resize(end as usize, 0);
        }
        self.buf[offset as usize..end as usize].copy_from_slice(&data[..n]);
        self.add_range(offset, end);
    }

    fn add_range(&mut self, start: u32, end: u32) {
        // Fast path: the chunk continues (or repeats) the last range.
        if let Some(last) = self.ranges.last_mut()
            && start >= last.0
            && start <= last.1
        {
            last.1 = last.1.max(end);
            return;
        }
        // General case, in place: insert, sort, merge. Ranges are few.
        self.ranges.push((start, end));
        self.ranges.sort_unstable();
        let mut w = 0;
        for r in 1..self.ranges.len() {
            let (a, b) = self.ranges[r];
            if a <= self.ranges[w].1 {
                self.ranges[w].1 = self.ranges[w].1.max(b);
            } else {
                w += 1;
                self.ranges[w] = (a, b);
            }
        }
        self.ranges.truncate(w + 1);
    }

    /// The bytes from offset 0 up to the first hole.
    pub fn contiguous(&self) -> &[u8] {
        match self.ranges.first() {
            Some(&(0, end)) => &self.buf[..end as usize],
            _ => &[],
        }
    }

    /// Bytes captured, holes excluded.
    pub fn captured(&self) -> u64 {
        self.released
            + self
                .ranges
                .iter()
                .map(|&(a, b)| u64::from(b - a))
                .sum::<u64>()
    }

    /// Whether some captured bytes are not reachable from offset 0.
    pub fn has_gap(&self) -> bool {
        self.released_gap || !matches!(self.ranges.as_slice(), [] | [(0, _)])
    }

    /// Whether any byte was captured.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Frees the buffer, keeping flags and counters (and the number of bytes
    /// captured).
    pub fn release(&mut self) {
        self.released = self.captured();
        self.released_gap = self.has_gap();
        self.buf = Vec::new();
        self.ranges = Vec::new();
        self.chunks = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        s.insert(0, b"abcdef", 4096, 0);
        s.insert(2, b"cdefgh", 4096, 0);
        s.insert(0, b"abc", 4096, 0);
        assert_eq!(s.contiguous(), b"abcdefgh");
        assert_eq!(s.captured(), 8);
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
    }
}
