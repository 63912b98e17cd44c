//! The device commands run on, and the CUDA settings a training step's many small kernels
//! want.

/// The device commands run on: the first CUDA GPU in a `--features cuda` build, else CPU.
pub fn default_device() -> candle_core::Result<candle_core::Device> {
    #[cfg(feature = "cuda")]
    {
        cuda_device(0)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Ok(candle_core::Device::Cpu)
    }
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
