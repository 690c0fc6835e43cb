//! Any bytes as an EPP frame: eppmux's sniffer either refuses them or reads the same kind, verb,
//! object namespace, op, clTRID and login fields as a conforming reading (roxmltree plus the XML
//! encoding rule, in `fuzz/reference.rs`, which `tests/differential.rs` runs in CI).
#![no_main]

#[path = "../reference.rs"]
mod reference;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(disagreement) = reference::compare(data) {
        panic!("{disagreement}");
    }
});
