//! The profiling examples' timer: one warm-up call, then the mean of `runs` calls.

use std::time::Instant;

/// Runs `f` once to warm up, then `runs` times; prints the mean time under `label` and
/// returns the last result.
pub fn time<T>(
    label: &str,
    runs: usize,
    f: impl Fn() -> candle_core::Result<T>,
) -> candle_core::Result<T> {
    let _ = f()?;
    let runs = runs.max(1);
    let t0 = Instant::now();
    for _ in 0..runs - 1 {
        f()?;
    }
    let r = f()?;
    let ms = t0.elapsed().as_secs_f64() * 1e3 / runs as f64;
    println!("{label:<24} {ms:8.2} ms");
    Ok(r)
}
