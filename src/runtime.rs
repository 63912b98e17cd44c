//! Process-wide settings for fast tensor work on the CPU. `init` must run first thing in
//! `main`, before any other thread exists.

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

/// The CUDA device `ordinal`, set up for a training step's thousands of small kernels
/// (`tune_cuda`). `MSA_CUDA_RUNTIME=plain` leaves candle's defaults, to measure the
/// difference.
#[cfg(feature = "cuda")]
pub fn cuda_device(ordinal: usize) -> candle_core::Result<candle_core::Device> {
    let device = candle_core::Device::new_cuda(ordinal)?;
    if std::env::var("MSA_CUDA_RUNTIME").as_deref() != Ok("plain") {
        if let candle_core::Device::Cuda(cuda) = &device {
            tune_cuda(cuda)?;
        }
    }
    Ok(device)
}

/// - No CUDA events per buffer: cudarc creates two with every allocation and destroys
///   them with it, to order work across streams, and msa runs on candle's one stream.
/// - The memory pool keeps what is freed, as PyTorch's caching allocator does, instead
///   of handing it back to the driver at every synchronisation (one per step at least).
/// - The shape and stride parameters of candle's strided kernels are uploaded once per
///   layout (candle's parameter cache) instead of once per launch. The cache holds on
///   the thread that made the device, which is the one that trains.
#[cfg(feature = "cuda")]
fn tune_cuda(cuda: &candle_core::CudaDevice) -> candle_core::Result<()> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    use candle_core::cuda_backend::WrapErr;
    // SAFETY: msa queues all its work, NCCL's included, on candle's stream, so no buffer
    // is read or written by two streams, which is all the events guard against.
    unsafe { cuda.disable_event_tracking() };
    let pool = default_pool(cuda)?;
    let mut keep = u64::MAX;
    // SAFETY: `pool` is the device's own pool, and the release threshold is a u64.
    unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut keep as *mut u64).cast(),
        )
    }
    .result()
    .w()?;
    std::mem::forget(cuda.enable_cuda_graph_htod_cache());
    Ok(())
}

/// The memory pool that candle's stream-ordered allocations come from.
#[cfg(feature = "cuda")]
pub fn default_pool(
    cuda: &candle_core::CudaDevice,
) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::sys::CUmemoryPool> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    use candle_core::cuda_backend::WrapErr;
    let stream = cuda.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread().w()?;
    let mut pool = std::ptr::null_mut();
    // SAFETY: the out-pointer is valid, and the device is this context's.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }
        .result()
        .w()?;
    Ok(pool)
}
