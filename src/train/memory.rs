//! The peak memory of a run, for `log.jsonl` and the progress line. On the CPU it is the
//! process's peak resident set; device memory on a GPU is not measured yet (None).

use candle_core::Device;

/// Peak memory so far, in MiB.
pub fn peak_mib(device: &Device) -> Option<f64> {
    match device {
        Device::Cpu => peak_rss_mib(),
        _ => None,
    }
}

fn peak_rss_mib() -> Option<f64> {
    // SAFETY: getrusage fills the struct it is given and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0;
    // Linux reports ru_maxrss in KiB.
    ok.then(|| usage.ru_maxrss as f64 / 1024.0)
}

/// " peak N MiB" for a progress line, or nothing where it is not measured.
pub fn peak_label(device: &Device) -> String {
    peak_mib(device)
        .map(|m| format!(" peak {m:.0} MiB"))
        .unwrap_or_default()
}
