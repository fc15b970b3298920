//! Stream reassembly: arbitrary (offset, length) chunks must keep the contiguous
//! prefix consistent with what was inserted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtls_auditor::flows::Stream;

fuzz_target!(|data: &[u8]| {
    let mut s = Stream::default();
    let mut model = vec![None::<u8>; 1024];
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
            if at < 1024 {
                model[at] = Some(fill);
            }
        }
    }
    let prefix = s.contiguous();
    for (i, b) in prefix.iter().enumerate() {
        assert_eq!(model[i], Some(*b), "byte {i}");
    }
    let expected = model.iter().take_while(|b| b.is_some()).count();
    assert_eq!(prefix.len(), expected);
});
