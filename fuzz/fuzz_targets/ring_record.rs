//! Decoding of ring-buffer records (the kernel/user boundary).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtls_auditor::capture::{Event, decode};

fuzz_target!(|data: &[u8]| {
    if let Ok(Event::Data(h, payload)) = decode(data) {
        assert_eq!(payload.len(), h.len as usize);
    }
});
