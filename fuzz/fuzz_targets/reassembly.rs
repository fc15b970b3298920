//! Stream reassembly: arbitrary (offset, length, byte) chunks, overlapping with
//! different bytes or not. The contiguous prefix must hold, at every offset, one of
//! the bytes some chunk carried there (the one all chunks agree on, when they do),
//! and reach exactly as far as the chunks cover unless the stream reports a hole.
//! Which copy wins an overlap is checked against a model of Linux's receive queue in
//! the unit tests of `flows::stream`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtls_auditor::flows::Stream;

fuzz_target!(|data: &[u8]| {
    let mut s = Stream::default();
    let mut written: Vec<Vec<u8>> = vec![Vec::new(); 1024];
    for chunk in data.chunks(4) {
        if chunk.len() < 4 {
            break;
        }
        let offset = u32::from(u16::from_be_bytes([chunk[0], chunk[1]])) % 1100;
        let len = usize::from(chunk[2] % 64);
        let fill = chunk[3];
        let bytes = vec![fill; len];
        s.insert(offset, &bytes, 1024, 0);
        for i in 0..len {
            let at = offset as usize + i;
            if at < 1024 && !written[at].contains(&fill) {
                written[at].push(fill);
            }
        }
    }
    let prefix = s.contiguous();
    for (i, b) in prefix.iter().enumerate() {
        assert!(written[i].contains(b), "byte {i}: {b} was never sent there");
        if written[i].len() == 1 {
            assert_eq!(written[i][0], *b, "byte {i}");
        }
    }
    let covered = written.iter().take_while(|w| !w.is_empty()).count();
    assert!(prefix.len() <= covered);
    if !s.has_gap() {
        assert_eq!(prefix.len(), covered);
        assert!(written[covered..].iter().all(Vec::is_empty));
    }
    // Chunks that never disagree are never a conflict.
    if written.iter().all(|w| w.len() <= 1) {
        assert_eq!(s.overlaps().segments, 0);
    }
});
