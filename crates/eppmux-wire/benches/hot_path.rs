//! Microbenchmarks of the per-command hot path: the frame codec and the XML sniffer, on the
//! sample frames real clients send (`cargo bench --bench hot_path`).

use bytes::{Bytes, BytesMut};
use divan::{black_box, Bencher};
use eppmux_wire::epp;
use eppmux_wire::frame::EppCodec;
use tokio_util::codec::{Decoder, Encoder};

fn main() {
    divan::main();
}

fn sample(name: &str) -> Bytes {
    let path = format!("{}/tests/frames/{name}", env!("CARGO_MANIFEST_DIR"));
    Bytes::from(std::fs::read(path).expect("sample frame"))
}

const FRAMES: &[&str] = &[
    "domain-check.xml",
    "login-epplib.xml",
    "domain-create-secdns.xml",
    "response-1000-check.xml",
    "greeting.xml",
];

#[divan::bench(args = FRAMES)]
fn sniff(bencher: Bencher, name: &str) {
    let frame = sample(name);
    bencher
        .counter(divan::counter::BytesCount::new(frame.len()))
        .bench(|| epp::sniff(black_box(&frame)));
}

#[divan::bench(args = FRAMES)]
fn encode_then_decode(bencher: Bencher, name: &str) {
    let frame = sample(name);
    let mut codec = EppCodec::default();
    let mut buf = BytesMut::with_capacity(frame.len() + 4);
    bencher
        .counter(divan::counter::BytesCount::new(frame.len()))
        .bench_local(|| {
            codec
                .encode(black_box(frame.clone()), &mut buf)
                .expect("encode");
            codec.decode(&mut buf).expect("decode").expect("a frame")
        });
}

#[divan::bench]
fn build_response() -> Bytes {
    epp::response(
        2400,
        black_box("Command failed: pool exhausted"),
        Some(black_box("ABC-1")),
        "eppmux-1",
    )
}
