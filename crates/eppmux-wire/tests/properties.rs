//! Property tests for the frame codec: round trips through arbitrary read boundaries, and
//! arbitrary byte streams that never panic the decoder nor yield a frame above the limit.

use bytes::{Bytes, BytesMut};
use eppmux_wire::frame::{encode_frame, EppCodec, FrameError};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

const LIMIT: usize = 2048;

/// Feeds `stream` to a fresh decoder in pieces of the given sizes (cycled); returns the frames
/// and the first error.
fn decode_in_pieces(stream: &[u8], pieces: &[usize]) -> (Vec<Bytes>, Option<FrameError>) {
    let mut codec = EppCodec::new(LIMIT);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < stream.len() {
        let n = pieces[i % pieces.len()].max(1).min(stream.len() - at);
        buf.extend_from_slice(&stream[at..at + n]);
        at += n;
        i += 1;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    match codec.decode_eof(&mut buf) {
        Ok(Some(f)) => frames.push(f),
        Ok(None) => {}
        Err(e) => return (frames, Some(e)),
    }
    (frames, None)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn frames_round_trip_through_any_read_boundaries(
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..12),
        pieces in prop::collection::vec(1usize..64, 1..8),
    ) {
        let mut codec = EppCodec::new(LIMIT);
        let mut wire = BytesMut::new();
        for b in &bodies {
            codec.encode(Bytes::from(b.clone()), &mut wire).unwrap();
        }
        let (frames, err) = decode_in_pieces(&wire, &pieces);
        prop_assert!(err.is_none(), "{err:?}");
        let got: Vec<Vec<u8>> = frames.iter().map(|f| f.to_vec()).collect();
        prop_assert_eq!(got, bodies);
    }

    #[test]
    fn any_byte_stream_never_panics_nor_yields_oversize_frames(
        stream in prop::collection::vec(any::<u8>(), 0..4096),
        pieces in prop::collection::vec(1usize..512, 1..8),
    ) {
        let (frames, _err) = decode_in_pieces(&stream, &pieces);
        for f in &frames {
            prop_assert!(f.len() + 4 <= LIMIT);
            prop_assert!(!f.is_empty());
        }
    }

    #[test]
    fn headers_that_claim_too_much_are_refused_before_any_body(claimed in (LIMIT as u32 + 1)..=u32::MAX) {
        let mut stream = claimed.to_be_bytes().to_vec();
        stream.extend_from_slice(&[b'x'; 16]);
        let (frames, err) = decode_in_pieces(&stream, &[4]);
        prop_assert!(frames.is_empty());
        prop_assert!(matches!(err, Some(FrameError::TooLarge { .. })), "{err:?}");
    }

    #[test]
    fn encode_frame_matches_the_codec(body in prop::collection::vec(any::<u8>(), 1..1000)) {
        let mut wire = BytesMut::new();
        EppCodec::new(LIMIT).encode(Bytes::from(body.clone()), &mut wire).unwrap();
        prop_assert_eq!(&wire[..], &encode_frame(&body)[..]);
    }
}
