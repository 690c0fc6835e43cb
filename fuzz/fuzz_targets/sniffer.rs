//! Any bytes as an EPP frame: the sniffer and the clTRID salvage never panic, and whatever the
//! sniffer accepts as a command can be answered (the answer sniffs back as a response).
#![no_main]

use eppmux_wire::epp::{self, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = epp::salvage_cltrid(data);
    if let Ok(Message::Command(cmd)) = epp::sniff(data) {
        let _ = cmd.is_query();
        let answer = epp::response(2001, "x", cmd.cltrid.as_deref(), "sv");
        match epp::sniff(&answer) {
            Ok(Message::Response(r)) => assert_eq!(r.cltrid.as_deref(), cmd.cltrid.as_deref().map(str::trim)),
            other => panic!("our own answer does not sniff back: {other:?}"),
        }
    }
});
