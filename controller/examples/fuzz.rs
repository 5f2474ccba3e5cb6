//! The seeded fuzz targets at length: `cargo run --release -p rpar-controller --example fuzz
//! [inputs per target] [seed]`, printing how many inputs each target ran.

#[path = "../tests/fuzz_gen/mod.rs"]
mod fuzz_gen;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(11);
    for (name, run) in [
        ("wire", fuzz_gen::wire as fn(u64, u64) -> u64),
        ("hub", fuzz_gen::hub),
        ("native", fuzz_gen::native),
    ] {
        let t = std::time::Instant::now();
        let done = run(n, seed);
        println!(
            "{name:7} {done} inputs, no panic ({:.1} s, seed {seed})",
            t.elapsed().as_secs_f64()
        );
    }
}
