//! RFC 5734 §4 framing: a 32-bit big-endian total length that counts its own four bytes, then the
//! XML instance. This module owns the codec used on every socket eppmux touches (local clients,
//! upstream sessions, the mock registry, the load tools).
//!
//! Why a small `Decoder` instead of `LengthDelimitedCodec`: the proxy must tell a header that is
//! too short (< 5, it cannot hold a document) from one that is too long, so that it can answer with
//! an EPP error naming the reason, and it must refuse an oversize frame from the header alone,
//! before any of the claimed body is buffered. Both are typed errors here.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Size of the length header.
pub const HEADER_LEN: usize = 4;

/// Default maximum frame size (header included). 1 MiB is what the Python `epptools` client caps
/// at, and is far above any real EPP command or response (a large `<domain:info>` is a few KiB).
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {0} is below the minimum of 5 (RFC 5734 §4)")]
    TooShort(u32),
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    TooLarge { len: u32, max: usize },
    #[error("connection closed in the middle of a frame ({0} bytes buffered)")]
    Truncated(usize),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Codec for EPP data units. Decoded items are the XML body without the header; encoding takes a
/// body and writes header and body into one contiguous buffer, so a frame goes out in a single
/// write (and a single TLS record where it fits) — epplib reads the header with one `recv(4)` and
/// mis-frames if the header arrives alone.
#[derive(Debug, Clone)]
pub struct EppCodec {
    max_frame: usize,
}

impl EppCodec {
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }
}

impl Default for EppCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for EppCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        if len < 5 {
            return Err(FrameError::TooShort(len));
        }
        let total = len as usize;
        if total > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if src.len() < total {
            // Reserve only what this (already size-checked) frame still needs.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        Ok(Some(src.split_to(total - HEADER_LEN).freeze()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated(src.len())),
        }
    }
}

impl Encoder<Bytes> for EppCodec {
    type Error = FrameError;

    fn encode(&mut self, body: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        let total = body.len() + HEADER_LEN;
        if total > self.max_frame {
            return Err(FrameError::TooLarge {
                len: u32::try_from(total).unwrap_or(u32::MAX),
                max: self.max_frame,
            });
        }
        dst.reserve(total);
        dst.put_u32(total as u32);
        dst.extend_from_slice(&body);
        Ok(())
    }
}

/// What [`ClientCodec`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// The first bytes of a frame have arrived; the rest has not (yet).
    Begun,
    Frame(Bytes),
}

/// The codec for local clients: [`EppCodec`], plus an [`Incoming::Begun`] notice when a frame
/// starts arriving without completing, so that the reader can start a deadline for the rest of
/// it (the defence against clients that trickle bytes) without waking up periodically.
#[derive(Debug, Clone)]
pub struct ClientCodec {
    inner: EppCodec,
    begun: bool,
}

impl ClientCodec {
    pub fn new(max_frame: usize) -> Self {
        Self {
            inner: EppCodec::new(max_frame),
            begun: false,
        }
    }

    /// True while part of a frame is buffered.
    pub fn mid_frame(&self) -> bool {
        self.begun
    }

    /// Changes the largest frame accepted (eppmux accepts less before a client has logged in).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.inner.max_frame = max_frame;
    }
}

/// After a frame larger than this, the read buffer is given back rather than kept at that size
/// for the life of the connection.
const SHRINK_ABOVE: usize = 64 * 1024;

impl Decoder for ClientCodec {
    type Item = Incoming;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
        match self.inner.decode(src)? {
            Some(frame) => {
                // Whatever follows in the buffer belongs to the next frame.
                self.begun = false;
                if src.capacity() > SHRINK_ABOVE {
                    // The frame keeps the large allocation alive only as long as it lives.
                    *src = BytesMut::from(&src[..]);
                }
                Ok(Some(Incoming::Frame(frame)))
            }
            None if !src.is_empty() && !self.begun => {
                self.begun = true;
                Ok(Some(Incoming::Begun))
            }
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
        Ok(self.inner.decode_eof(src)?.map(Incoming::Frame))
    }
}

impl Encoder<Bytes> for ClientCodec {
    type Error = FrameError;

    fn encode(&mut self, body: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.inner.encode(body, dst)
    }
}

/// One frame as a single buffer, for callers that write without a `Framed` (scripts, tests).
pub fn encode_frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + HEADER_LEN);
    out.extend_from_slice(&((body.len() + HEADER_LEN) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut EppCodec, buf: &mut BytesMut) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(f) = codec.decode(buf).expect("decode") {
            out.push(f);
        }
        out
    }

    #[test]
    fn round_trip_and_header_counts_itself() {
        let mut codec = EppCodec::default();
        let mut buf = BytesMut::new();
        codec
            .encode(Bytes::from_static(b"<epp/>"), &mut buf)
            .unwrap();
        assert_eq!(&buf[..4], &10u32.to_be_bytes());
        assert_eq!(buf.len(), 10);
        assert_eq!(
            decode_all(&mut codec, &mut buf),
            vec![Bytes::from_static(b"<epp/>")]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn header_split_across_reads() {
        let mut codec = EppCodec::default();
        let wire = encode_frame(b"<hello/>");
        let mut buf = BytesMut::new();
        for (i, b) in wire.iter().enumerate() {
            buf.put_u8(*b);
            let got = codec.decode(&mut buf).unwrap();
            if i + 1 < wire.len() {
                assert!(got.is_none(), "frame returned early at byte {i}");
            } else {
                assert_eq!(got.unwrap(), Bytes::from_static(b"<hello/>"));
            }
        }
    }

    #[test]
    fn several_frames_in_one_read() {
        let mut codec = EppCodec::default();
        let mut wire = encode_frame(b"<a/>");
        wire.extend(encode_frame(b"<bb/>"));
        wire.extend(&encode_frame(b"<ccc/>")[..3]);
        let mut buf = BytesMut::from(&wire[..]);
        let frames = decode_all(&mut codec, &mut buf);
        assert_eq!(
            frames,
            vec![Bytes::from_static(b"<a/>"), Bytes::from_static(b"<bb/>")]
        );
        assert_eq!(buf.len(), 3, "partial third header stays buffered");
    }

    #[test]
    fn lengths_below_five_are_refused() {
        for len in 0u32..5 {
            let mut codec = EppCodec::default();
            let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
            buf.extend_from_slice(b"xxxx");
            match codec.decode(&mut buf) {
                Err(FrameError::TooShort(l)) => assert_eq!(l, len),
                other => panic!("length {len}: expected TooShort, got {other:?}"),
            }
        }
    }

    #[test]
    fn oversize_is_refused_from_the_header_without_buffering() {
        let mut codec = EppCodec::new(64);
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        let cap_before = buf.capacity();
        match codec.decode(&mut buf) {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!(len, u32::MAX);
                assert_eq!(max, 64);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(
            buf.capacity(),
            cap_before,
            "no allocation for the claimed size"
        );
        // Exactly the maximum is fine.
        let mut buf = BytesMut::from(&encode_frame(&[b'x'; 60])[..]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().len(), 60);
        // Encoding refuses what the peer could not accept either.
        assert!(codec
            .encode(Bytes::from(vec![0u8; 61]), &mut BytesMut::new())
            .is_err());
    }

    #[test]
    fn client_codec_announces_a_partial_frame_once() {
        let mut codec = ClientCodec::new(1024);
        let wire = encode_frame(b"<epp/>");
        let mut buf = BytesMut::from(&wire[..2]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Incoming::Begun));
        assert!(codec.mid_frame());
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            None,
            "announced once per frame"
        );
        buf.extend_from_slice(&wire[2..]);
        buf.extend_from_slice(&wire);
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Incoming::Frame(Bytes::from_static(b"<epp/>")))
        );
        // A whole frame in the buffer comes out at once, without a Begun.
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Incoming::Frame(Bytes::from_static(b"<epp/>")))
        );
        assert!(!codec.mid_frame());
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn the_read_buffer_shrinks_back_after_a_large_frame() {
        let mut codec = ClientCodec::new(2 << 20);
        let mut buf = BytesMut::from(&encode_frame(&vec![b'x'; 1 << 20])[..]);
        buf.extend_from_slice(&encode_frame(b"<epp/>")[..3]);
        let Some(Incoming::Frame(big)) = codec.decode(&mut buf).unwrap() else {
            panic!("a frame")
        };
        assert_eq!(big.len(), 1 << 20);
        assert!(
            buf.capacity() <= SHRINK_ABOVE,
            "{} bytes kept",
            buf.capacity()
        );
        assert_eq!(buf.len(), 3, "the start of the next frame is kept");
        codec.set_max_frame(64);
        let mut buf = BytesMut::from(&encode_frame(&[b'x'; 100])[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn eof_mid_frame_is_an_error_and_eof_between_frames_is_not() {
        let mut codec = EppCodec::default();
        let wire = encode_frame(b"<epp/>");
        let mut buf = BytesMut::from(&wire[..7]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FrameError::Truncated(7))
        ));
        let mut buf = BytesMut::from(&wire[..2]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FrameError::Truncated(2))
        ));
        let mut empty = BytesMut::new();
        assert!(codec.decode_eof(&mut empty).unwrap().is_none());
    }
}
