//! Any byte stream, cut into reads anywhere: the decoder never panics, never yields a frame
//! larger than its limit, and yields exactly what a reference parser of RFC 5734 frames yields.
#![no_main]

use bytes::BytesMut;
use eppmux_wire::frame::{ClientCodec, EppCodec, Incoming};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    // The first byte chooses the read size, the rest is the stream.
    let chunk = usize::from(data[0]) + 1;
    let stream = &data[1..];

    let mut codec = EppCodec::new(LIMIT);
    let mut client = ClientCodec::new(LIMIT);
    let mut buf = BytesMut::new();
    let mut cbuf = BytesMut::new();
    let mut frames = Vec::new();
    let mut failed = false;
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        cbuf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => {
                    assert!(f.len() + 4 <= LIMIT);
                    frames.push(f);
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        // The client codec must agree on frames; it may also announce partial ones.
        loop {
            match client.decode(&mut cbuf) {
                Ok(Some(Incoming::Frame(f))) => assert!(f.len() + 4 <= LIMIT),
                Ok(Some(Incoming::Begun)) => assert!(!cbuf.is_empty()),
                Ok(None) | Err(_) => break,
            }
        }
        if failed {
            break;
        }
    }

    // Reference: walk the stream by its length headers.
    let mut expected = Vec::new();
    let mut rest = stream;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if !(5..=LIMIT).contains(&len) || rest.len() < len {
            break;
        }
        expected.push(&rest[4..len]);
        rest = &rest[len..];
    }
    assert!(frames.len() <= expected.len() || failed);
    for (got, want) in frames.iter().zip(&expected) {
        assert_eq!(&got[..], *want);
    }
    if !failed {
        assert_eq!(frames.len(), expected.len());
    }
});
