//! Decoding ring-buffer records into events.
//!
//! Records are untrusted byte slices as far as this module is concerned: every
//! length is checked before a struct is read, and kinds are decoded with
//! `TryFrom`, never transmuted.

use std::mem::size_of;

use agent_common::{ConnEvent, DataHeader, EventHeader, OrigDstEvent, kind};
use thiserror::Error;

/// Kind of a lifecycle event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    Established,
    Closed,
    Listen,
    Preexisting,
    /// A connect()ing socket's SYN left with other addresses (local/remote are the
    /// packet's).
    Nat,
    /// A connect()ing socket closed without being established: refused (RESET in
    /// its flags) or unanswered.
    Attempt,
}

/// Kind of any event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Conn(ConnKind),
    Data,
    OriginalDst,
    /// An announcement with the first data record of its socket behind it.
    EstablishedData,
}

impl TryFrom<u32> for EventKind {
    type Error = DecodeError;

    fn try_from(v: u32) -> Result<Self, DecodeError> {
        Ok(match v {
            kind::ESTABLISHED => Self::Conn(ConnKind::Established),
            kind::CLOSED => Self::Conn(ConnKind::Closed),
            kind::LISTEN => Self::Conn(ConnKind::Listen),
            kind::PREEXISTING => Self::Conn(ConnKind::Preexisting),
            kind::NAT => Self::Conn(ConnKind::Nat),
            kind::ATTEMPT => Self::Conn(ConnKind::Attempt),
            kind::DATA => Self::Data,
            kind::ORIGINAL_DST => Self::OriginalDst,
            kind::ESTABLISHED_DATA => Self::EstablishedData,
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

/// One decoded record.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    Conn(ConnKind, ConnEvent),
    Data(DataHeader, &'a [u8]),
    /// A process learned the pre-NAT destination of one of its sockets.
    OriginalDst(OrigDstEvent),
    /// A socket's deferred ESTABLISHED event and its first data, in one record:
    /// [`Event::split`] gives the two events.
    EstablishedData(ConnEvent, DataHeader, &'a [u8]),
}

impl<'a> Event<'a> {
    /// The events a record stands for, in order: one, or an announcement and the
    /// data that came with it.
    pub fn split(self) -> (Event<'a>, Option<Event<'a>>) {
        match self {
            Event::EstablishedData(mut ev, h, payload) => {
                ev.hdr.kind = kind::ESTABLISHED;
                (
                    Event::Conn(ConnKind::Established, ev),
                    Some(Event::Data(h, payload)),
                )
            }
            other => (other, None),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than an event header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("announcement record followed by a record of kind {0}, not data")]
    NotData(u32),
    #[error("{kind:?} record of {got} bytes, expected {want}")]
    Size {
        kind: EventKind,
        got: usize,
        want: usize,
    },
}

fn read<T: Copy>(buf: &[u8]) -> T {
    debug_assert!(buf.len() >= size_of::<T>());
    // SAFETY: callers check `buf.len() >= size_of::<T>()`; `T` is a plain
    // `#[repr(C)]` wire struct of integers for which every bit pattern is valid, and
    // the read is unaligned-safe.
    unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) }
}

/// Decodes one ring-buffer record.
pub fn decode(buf: &[u8]) -> Result<Event<'_>, DecodeError> {
    if buf.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(buf.len()));
    }
    let header: EventHeader = read(buf);
    let event_kind = EventKind::try_from(header.kind)?;
    match event_kind {
        EventKind::Conn(k) => {
            let want = size_of::<ConnEvent>();
            if buf.len() < want {
                return Err(DecodeError::Size {
                    kind: event_kind,
                    got: buf.len(),
                    want,
                });
            }
            Ok(Event::Conn(k, read(buf)))
        }
        EventKind::OriginalDst => {
            let want = size_of::<OrigDstEvent>();
            if buf.len() < want {
                return Err(DecodeError::Size {
                    kind: event_kind,
                    got: buf.len(),
                    want,
                });
            }
            Ok(Event::OriginalDst(read(buf)))
        }
        EventKind::Data => {
            let (h, payload) = data(event_kind, buf, 0)?;
            Ok(Event::Data(h, payload))
        }
        EventKind::EstablishedData => {
            let clen = size_of::<ConnEvent>();
            let (h, payload) = data(event_kind, buf, clen)?;
            if h.hdr.kind != kind::DATA {
                return Err(DecodeError::NotData(h.hdr.kind));
            }
            Ok(Event::EstablishedData(read(buf), h, payload))
        }
    }
}

/// The data record at `at` in `buf`: its header and payload, checked to fit.
fn data(event_kind: EventKind, buf: &[u8], at: usize) -> Result<(DataHeader, &[u8]), DecodeError> {
    let hlen = at + size_of::<DataHeader>();
    if buf.len() < hlen {
        return Err(DecodeError::Size {
            kind: event_kind,
            got: buf.len(),
            want: hlen,
        });
    }
    let h: DataHeader = read(&buf[at..]);
    let want = hlen + h.len as usize;
    if buf.len() < want {
        return Err(DecodeError::Size {
            kind: event_kind,
            got: buf.len(),
            want,
        });
    }
    Ok((h, &buf[hlen..want]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain repr(C) value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert_eq!(decode(&[0; 4]).unwrap_err(), DecodeError::Short(4));
        let mut h = EventHeader {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(
            decode(&bytes_of(&h)).unwrap_err(),
            DecodeError::UnknownKind(99)
        );
        h.kind = kind::CLOSED;
        assert!(matches!(
            decode(&bytes_of(&h)),
            Err(DecodeError::Size { .. })
        ));
    }

    #[test]
    fn data_length_must_fit_the_record() {
        let h = DataHeader {
            hdr: EventHeader {
                kind: kind::DATA,
                _pad0: 0,
                cookie: 7,
                ts_ns: 1,
            },
            cgroup_id: 0,
            offset: 0,
            len: 5,
            seg_len: 5,
            direction: 0,
            tcp_flags: 0,
            flags: 0,
            _pad0: 0,
            pid: 0,
            tgid: 0,
            comm: [0; 16],
        };
        let mut buf = bytes_of(&h);
        assert!(matches!(decode(&buf), Err(DecodeError::Size { .. })));
        buf.extend_from_slice(b"hello");
        match decode(&buf).unwrap() {
            Event::Data(d, payload) => {
                assert_eq!(d.hdr.cookie, 7);
                assert_eq!(payload, b"hello");
            }
            other => panic!("unexpected {other:?}"),
        }

        // The same data behind an announcement: one record, two events.
        // SAFETY: all-zero is a valid ConnEvent (plain integers and arrays).
        let mut ev: ConnEvent = unsafe { std::mem::zeroed() };
        ev.hdr.kind = kind::ESTABLISHED_DATA;
        ev.hdr.cookie = 7;
        ev.hdr.ts_ns = 1;
        let mut rec = bytes_of(&ev);
        rec.extend_from_slice(&bytes_of(&h));
        assert!(matches!(decode(&rec), Err(DecodeError::Size { .. })));
        rec.extend_from_slice(b"hello");
        let (first, then) = decode(&rec).unwrap().split();
        match (first, then) {
            (Event::Conn(ConnKind::Established, e), Some(Event::Data(d, payload))) => {
                assert_eq!(e.hdr.kind, kind::ESTABLISHED);
                assert_eq!((e.hdr.cookie, d.hdr.cookie), (7, 7));
                assert_eq!(payload, b"hello");
            }
            other => panic!("unexpected {other:?}"),
        }
        // The record behind the announcement must be a data record.
        let mut bad = bytes_of(&ev);
        let mut not_data = h;
        not_data.hdr.kind = kind::CLOSED;
        bad.extend_from_slice(&bytes_of(&not_data));
        bad.extend_from_slice(b"hello");
        let err = decode(&bad).unwrap_err();
        assert_eq!(err, DecodeError::NotData(kind::CLOSED));
        assert_eq!(
            err.to_string(),
            "announcement record followed by a record of kind 3, not data"
        );
    }
}
