//! The peak memory of a run, for `log.jsonl` and the progress line. On the CPU it is the
//! process's peak resident set. On a GPU it is the device memory in use (cuMemGetInfo:
//! total minus free, so the CUDA context and anything else on the card count too), sampled
//! after every forward and backward pass (`sample`), where a training step peaks. The memory
//! pool keeps what is freed (`runtime::device::cuda_device`), so that figure is the pool's high
//! water mark, as nvidia-smi shows it. What the allocations themselves hold, now and at
//! their peak, comes from the pool's own counters (`trace`, `peak_allocated_mib`).

use candle_core::Device;
#[cfg(feature = "cuda")]
use std::sync::atomic::{AtomicU64, Ordering};

const MIB: f64 = 1024.0 * 1024.0;

#[cfg(feature = "cuda")]
static DEVICE_PEAK: AtomicU64 = AtomicU64::new(0);

/// Peak memory so far, in MiB.
pub fn peak_mib(device: &Device) -> Option<f64> {
    match device {
        Device::Cpu => peak_rss_mib(),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => {
            sample(device);
            Some(DEVICE_PEAK.load(Ordering::Relaxed) as f64 / MIB)
        }
        _ => None,
    }
}

/// Records the device memory in use now, if it is the most so far (GPUs only).
pub fn sample(device: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        if let Some(used) = device_used_bytes(cuda) {
            DEVICE_PEAK.fetch_max(used, Ordering::Relaxed);
        }
    }
    #[cfg(not(feature = "cuda"))]
    let _ = device;
}

/// Logs the memory in use after `what`, with `MSA_LOG=msa::memory=debug`, to find where a
/// step's memory goes: the device memory on a GPU, the resident set on the CPU; and the
/// tensors made since the last trace (`runtime::tensors_created`), to find where a GPU
/// step's launches go. Nothing is measured when the target is off. A GPU runs ahead of the
/// host, so its figure is what the queued work has allocated.
pub fn trace(device: &Device, what: impl FnOnce() -> String) {
    if !tracing::enabled!(target: "msa::memory", tracing::Level::DEBUG) {
        return;
    }
    let used = match device {
        Device::Cpu => resident_bytes(),
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => {
            use candle_core::cuda_backend::cudarc::driver::sys::CUmemPool_attribute as A;
            pool_bytes(cuda, A::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)
        }
        _ => None,
    };
    static LAST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let now = crate::runtime::tensors_created();
    let since = now.saturating_sub(LAST.swap(now, std::sync::atomic::Ordering::Relaxed));
    let mib = used.map_or(f64::NAN, |u| u as f64 / MIB);
    tracing::debug!(target: "msa::memory", "{}: {mib:.0} MiB in use, {since} tensors since the last trace", what());
}

/// The resident set now (Linux: /proc/self/statm, in pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(0) as u64)
}

#[cfg(feature = "cuda")]
fn device_used_bytes(cuda: &candle_core::CudaDevice) -> Option<u64> {
    use candle_core::cuda_backend::cudarc::driver::result::mem_get_info;
    cuda.cuda_stream().context().bind_to_thread().ok()?;
    let (free, total) = mem_get_info().ok()?;
    Some(total.saturating_sub(free) as u64)
}

/// The most the allocations held at once on a GPU, in MiB (PyTorch's
/// `max_memory_allocated`): the pool's own high-water mark, without the CUDA context and
/// without what the pool keeps in reserve.
pub fn peak_allocated_mib(device: &Device) -> Option<f64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        use candle_core::cuda_backend::cudarc::driver::sys::CUmemPool_attribute as A;
        return pool_bytes(cuda, A::CU_MEMPOOL_ATTR_USED_MEM_HIGH).map(|b| b as f64 / MIB);
    }
    let _ = device;
    None
}

/// One of the memory pool's byte counters.
#[cfg(feature = "cuda")]
fn pool_bytes(
    cuda: &candle_core::CudaDevice,
    attr: candle_core::cuda_backend::cudarc::driver::sys::CUmemPool_attribute,
) -> Option<u64> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let pool = super::device::default_pool(cuda).ok()?;
    let mut bytes = 0u64;
    // SAFETY: the pool is the device's, and the byte counters are u64.
    unsafe { sys::cuMemPoolGetAttribute(pool, attr, (&mut bytes as *mut u64).cast()) }
        .result()
        .ok()?;
    Some(bytes)
}

/// The process's peak resident set so far, in MiB (on Linux the same figure as VmHWM).
pub fn peak_rss_mib() -> Option<f64> {
    // SAFETY: getrusage fills the struct it is given and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0;
    // Linux reports ru_maxrss in KiB.
    ok.then(|| usage.ru_maxrss as f64 * 1024.0 / MIB)
}

/// " peak N MiB" for a progress line, or nothing where it is not measured.
pub fn peak_label(device: &Device) -> String {
    peak_mib(device)
        .map(|m| format!(" peak {m:.0} MiB"))
        .unwrap_or_default()
}
