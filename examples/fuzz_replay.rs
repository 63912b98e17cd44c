//! Runs one fuzz target on saved inputs, one at a time, and prints each input's time and
//! error: `cargo run --release --example fuzz_replay -- TARGET FILE...`. Under
//! `/usr/bin/time -v` it gives the peak memory of the worst input (RELIABILITY.md).

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let target = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: fuzz_replay TARGET FILE..."))?;
    for path in args {
        let data = std::fs::read(&path)?;
        let start = std::time::Instant::now();
        if !msa::fuzz::run(&target, &data) {
            anyhow::bail!("unknown fuzz target {target}");
        }
        println!("{path}: {:.3} s", start.elapsed().as_secs_f64());
    }
    Ok(())
}
