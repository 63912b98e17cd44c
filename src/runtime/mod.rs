//! The process and its devices: settings for fast tensor work on the CPU (`init` must run
//! first thing in `main`, before any other thread exists), the device commands run on
//! (`device`), and what a run's memory and tensors cost (`memory`).

pub mod device;
pub mod memory;

/// Large tensors come and go every layer. glibc hands blocks above 32 MiB straight back
/// to the kernel and maps fresh zeroed pages for the next one; a profile of a training step
/// showed a quarter of the time in page clearing and TLB shootdowns. Keeping freed memory in
/// the heap lets the next tensor reuse it.
/// glibc's own MALLOC_MMAP_THRESHOLD_ variable, when set, wins.
fn keep_freed_memory() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// candle asks for its thread count before every matmul and, unless RAYON_NUM_THREADS is
/// set, answers by parsing /proc/cpuinfo: 8% of a training step's CPU time in a profile.
/// Setting the variable once, to the count candle would pick, makes the question free.
fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        // Called before any other thread exists, so nothing reads the environment meanwhile.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// candle's element-wise worker spins 25 000 times before it parks; on a small machine that
/// spinning takes a core from the matmul threads. 1 000 measured faster on the 2-core dev
/// machine (BENCHMARKS.md); the variable still wins when set.
fn shorten_spin() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // Called before any other thread exists.
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000");
    }
}

/// Applies the settings above; call it before anything else starts a thread.
pub fn init() {
    keep_freed_memory();
    pin_thread_count();
    shorten_spin();
}

/// How many tensors this process has created so far, views included. On a GPU nearly every
/// one is a kernel launch and an allocation, so a step's count measures its host-side
/// overhead on any device (`msa bench train-step` reports it).
pub fn tensors_created() -> usize {
    use candle_core::{DType, Device, Tensor};
    let Ok(t) = Tensor::zeros((), DType::U8, &Device::Cpu) else {
        return 0;
    };
    // candle numbers tensors from one global counter and prints an id as `TensorId(n)`.
    format!("{:?}", t.id())
        .trim_start_matches("TensorId(")
        .trim_end_matches(')')
        .parse()
        .unwrap_or(0)
}
