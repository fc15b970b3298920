//! IPv4 and IPv6 fragment reassembly for offline captures (the live agent sees
//! reassembled packets: the kernel has already put them together).
//!
//! The per-packet buffers are etherparse's `IpDefragBuf`; this module keys them,
//! bounds how many are open and for how long, and recycles their memory.

use std::{collections::HashMap, net::IpAddr};

use etherparse::{
    IpFragOffset, IpNumber, Ipv6ExtensionSlice, LaxIpSlice,
    defrag::{IpDefragBuf, IpFragRange},
};

/// Packets being put together at once; the oldest is dropped beyond this.
const MAX_OPEN: usize = 4096;
/// A packet whose fragments span more capture time than this is dropped (Linux's
/// default `ipfrag_time` is 30 s).
const MAX_AGE_NS: u64 = 60_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    id: u32,
    proto: u8,
    /// How deep in tunnels the packet sits, so an inner and an outer packet never mix.
    depth: u8,
}

/// A fragment taken from an IP header.
#[derive(Debug, Clone, Copy)]
pub struct Fragment<'a> {
    key_id: u32,
    offset: IpFragOffset,
    more: bool,
    proto: IpNumber,
    payload: &'a [u8],
}

/// The fragment an IP packet carries, if it is one.
pub fn fragment<'a>(ip: &LaxIpSlice<'a>) -> Option<Fragment<'a>> {
    let payload = ip.payload();
    match ip {
        LaxIpSlice::Ipv4(v4) => {
            if !payload.fragmented {
                return None;
            }
            let h = v4.header();
            Some(Fragment {
                key_id: u32::from(h.identification()),
                offset: h.fragments_offset(),
                more: h.more_fragments(),
                proto: payload.ip_number,
                payload: payload.payload,
            })
        }
        LaxIpSlice::Ipv6(v6) => {
            let frag = v6.extensions().clone().into_iter().find_map(|e| match e {
                Ipv6ExtensionSlice::Fragment(f) => Some(f),
                _ => None,
            })?;
            // Decoded here from the raw header: etherparse 0.19 reads the offset and
            // the M flag from the wrong bits (RFC 8200 4.5: a 13-bit offset, two
            // reserved bits, then M as the lowest bit).
            let raw = frag.slice();
            let field = u16::from_be_bytes([*raw.get(2)?, *raw.get(3)?]);
            let (units, more) = (field >> 3, field & 1 == 1);
            if units == 0 && !more {
                // An atomic fragment: the whole packet.
                return None;
            }
            let id = u32::from_be_bytes([*raw.get(4)?, *raw.get(5)?, *raw.get(6)?, *raw.get(7)?]);
            Some(Fragment {
                key_id: id,
                offset: IpFragOffset::try_new(units).ok()?,
                more,
                proto: frag.next_header(),
                payload: payload.payload,
            })
        }
    }
}

/// A reassembled IP payload.
#[derive(Debug)]
pub struct Whole {
    pub proto: u8,
    pub payload: Vec<u8>,
    sections: Vec<IpFragRange>,
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
    open: HashMap<Key, (IpDefragBuf, u64)>,
    spare: Vec<(Vec<u8>, Vec<IpFragRange>)>,
    /// Packets dropped unfinished (evicted, expired) so far.
    pub abandoned: u64,
}

impl Defrag {
    pub fn add(&mut self, src: IpAddr, dst: IpAddr, depth: u8, f: Fragment<'_>, ts: u64) -> Added {
        let key = Key {
            src,
            dst,
            id: f.key_id,
            proto: f.proto.0,
            depth,
        };
        if !self.open.contains_key(&key) {
            self.expire(ts);
            if self.open.len() >= MAX_OPEN {
                self.evict_oldest();
            }
            let (data, sections) = self.spare.pop().unwrap_or_default();
            self.open
                .insert(key, (IpDefragBuf::new(f.proto, data, sections), ts));
        }
        let Some((buf, _)) = self.open.get_mut(&key) else {
            return Added::Invalid;
        };
        if buf.add(f.offset, f.more, f.payload).is_err() {
            if let Some((buf, _)) = self.open.remove(&key) {
                self.spare.push(buf.take_bufs());
            }
            return Added::Invalid;
        }
        if !buf.is_complete() {
            return Added::Pending;
        }
        match self.open.remove(&key) {
            Some((buf, _)) => {
                let (payload, sections) = buf.take_bufs();
                Added::Complete(Whole {
                    proto: key.proto,
                    payload,
                    sections,
                })
            }
            None => Added::Invalid,
        }
    }

    /// Gives a reassembled packet's memory back.
    pub fn recycle(&mut self, whole: Whole) {
        if self.spare.len() < 64 {
            self.spare.push((whole.payload, whole.sections));
        }
    }

    /// Packets still waiting for fragments.
    pub fn pending(&self) -> usize {
        self.open.len()
    }

    fn expire(&mut self, now: u64) {
        let before = self.open.len();
        self.open
            .retain(|_, (_, first)| now.saturating_sub(*first) <= MAX_AGE_NS);
        self.abandoned += (before - self.open.len()) as u64;
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .open
            .iter()
            .min_by_key(|(_, (_, ts))| *ts)
            .map(|(k, _)| *k);
        if let Some(k) = oldest
            && let Some((buf, _)) = self.open.remove(&k)
        {
            self.abandoned += 1;
            self.spare.push(buf.take_bufs());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 fragment of `payload` at byte `offset` (a multiple of 8).
    fn v4_fragment(id: u16, offset: u16, more: bool, payload: &[u8]) -> Vec<u8> {
        let total = 20 + payload.len() as u16;
        let flags_off = (if more { 0x2000 } else { 0 }) | (offset / 8);
        let mut v = vec![0x45, 0];
        v.extend_from_slice(&total.to_be_bytes());
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(&flags_off.to_be_bytes());
        v.extend_from_slice(&[64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        v.extend_from_slice(payload);
        v
    }

    fn feed(d: &mut Defrag, pkt: &[u8], ts: u64) -> Added {
        let (ip, _) = LaxIpSlice::from_slice(pkt).expect("ip");
        let f = fragment(&ip).expect("a fragment");
        d.add(ip.source_addr(), ip.destination_addr(), 0, f, ts)
    }

    #[test]
    fn out_of_order_fragments_make_one_packet() {
        let data: Vec<u8> = (0..40u8).collect();
        let mut d = Defrag::default();
        assert!(matches!(
            feed(&mut d, &v4_fragment(7, 24, false, &data[24..]), 1),
            Added::Pending
        ));
        assert!(matches!(
            feed(&mut d, &v4_fragment(7, 0, true, &data[..16]), 2),
            Added::Pending
        ));
        match feed(&mut d, &v4_fragment(7, 16, true, &data[16..24]), 3) {
            Added::Complete(w) => {
                assert_eq!(w.payload, data);
                assert_eq!(w.proto, 6);
                d.recycle(w);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d.pending(), 0);
    }

    /// An IPv6 fragment as RFC 8200 lays it out.
    fn v6_fragment(id: u32, offset: u16, more: bool, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x60, 0, 0, 0];
        v.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        v.extend_from_slice(&[44, 64]);
        v.extend_from_slice(&[0xfd, 0x13, 2, 0x13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        v.extend_from_slice(&[0xfd, 0x13, 2, 0x13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        v.extend_from_slice(&[6, 0]);
        v.extend_from_slice(&(offset | u16::from(more)).to_be_bytes());
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn ipv6_fragment_headers_as_the_rfc_lays_them_out() {
        let data: Vec<u8> = (0..64u8).collect();
        let mut d = Defrag::default();
        // Offsets that etherparse 0.19 would misread (32 bytes: its M bit clear).
        assert!(matches!(
            feed(&mut d, &v6_fragment(9, 32, false, &data[32..]), 1),
            Added::Pending
        ));
        match feed(&mut d, &v6_fragment(9, 0, true, &data[..32]), 2) {
            Added::Complete(w) => assert_eq!(w.payload, data),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn old_and_excess_packets_are_abandoned() {
        let mut d = Defrag::default();
        feed(&mut d, &v4_fragment(1, 0, true, &[0; 8]), 0);
        feed(&mut d, &v4_fragment(2, 0, true, &[0; 8]), MAX_AGE_NS + 1);
        assert_eq!(d.pending(), 1);
        assert_eq!(d.abandoned, 1);
        for id in 3..(3 + MAX_OPEN as u16) {
            feed(&mut d, &v4_fragment(id, 0, true, &[0; 8]), MAX_AGE_NS + 2);
        }
        assert_eq!(d.pending(), MAX_OPEN);
        assert_eq!(d.abandoned, 2);
    }
}
