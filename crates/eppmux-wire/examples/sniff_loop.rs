//! Sniffs one frame N times: the fixed workload whose instruction count `scripts/callgrind.sh`
//! measures (run it with two values of N; the difference divided by the difference of N is the
//! cost of one sniff, without the program's start and the file read).
//!
//! Usage: sniff_loop FRAME-FILE N

use std::hint::black_box;

use eppmux_wire::epp;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(n)) = (args.next(), args.next()) else {
        return Err("usage: sniff_loop FRAME-FILE N".into());
    };
    let frame = std::fs::read(path)?;
    let n: u64 = n.parse()?;
    let mut sniffed_ok = 0u64;
    for _ in 0..n {
        if epp::sniff(black_box(&frame)).is_ok() {
            sniffed_ok += 1;
        }
    }
    println!("{sniffed_ok} of {n} sniffed");
    Ok(())
}
