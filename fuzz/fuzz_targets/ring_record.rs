//! Decoding of ring-buffer records (the kernel/user boundary).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtls_auditor::capture::{Event, decode};

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(Event::Data(h, payload)) => assert_eq!(payload.len(), h.len as usize),
        Ok(event @ Event::EstablishedData(_, h, payload)) => {
            assert_eq!(payload.len(), h.len as usize);
            let (first, then) = event.split();
            assert!(matches!(first, Event::Conn(..)));
            assert!(matches!(then, Some(Event::Data(..))));
        }
        _ => {}
    }
});
