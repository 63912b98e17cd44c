//! Ranks on GPUs, one process each, reducing with NCCL (cudarc's bindings). Rank 0 makes
//! NCCL's unique id and shares it over the TCP rendezvous; every rank then joins the NCCL
//! communicator on its own device. The gradient buckets stay on the device: the
//! all-reduce runs on candle's stream, in place of a copy through the host.

use super::parallel::Communicator;
use super::tcp_group::Rendezvous;
use anyhow::{bail, Context, Result};
use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, ReduceOp};
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};
use std::sync::Mutex;

/// A NCCL communicator. NCCL allows one to be used from any thread as long as no two
/// calls overlap, which the mutex guarantees.
struct SharedComm(Comm);

// SAFETY: see `SharedComm`: every use goes through `NcclGroup::comm`'s mutex.
unsafe impl Send for SharedComm {}

pub struct NcclGroup {
    comm: Mutex<SharedComm>,
    rank: usize,
    world: usize,
}

impl NcclGroup {
    /// Joins the NCCL communicator of the ranks met in `rendezvous`, on `device`.
    pub fn new(mut rendezvous: Rendezvous, device: &Device) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            bail!("NCCL needs a CUDA device, not {device:?}");
        };
        let id = match rendezvous.rank {
            0 => Id::new().map_err(|e| anyhow::anyhow!("ncclGetUniqueId: {e:?}"))?,
            _ => Id::uninit([0; 128]),
        };
        let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
        let shared = rendezvous.share(&bytes)?;
        let internal: [std::ffi::c_char; 128] = shared
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|v: Vec<_>| anyhow::anyhow!("a NCCL id of {} bytes, not 128", v.len()))?;
        let comm = Comm::from_rank(
            cuda.cuda_stream(),
            rendezvous.rank,
            rendezvous.world,
            Id::uninit(internal),
        )
        .map_err(|e| anyhow::anyhow!("ncclCommInitRank (rank {}): {e:?}", rendezvous.rank))?;
        Ok(Self {
            comm: Mutex::new(SharedComm(comm)),
            rank: rendezvous.rank,
            world: rendezvous.world,
        })
    }
}

impl Communicator for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, values: &Tensor) -> Result<Tensor> {
        let values = values.contiguous()?;
        let comm = self
            .comm
            .lock()
            .map_err(|_| anyhow::anyhow!("a thread panicked during an all-reduce"))?;
        values
            .apply_op1_no_bwd(&AllReduce(&comm.0))
            .context("the NCCL all-reduce")
    }
}

/// The all-reduce as a candle op, so that it reads and writes candle's device buffers.
struct AllReduce<'a>(&'a Comm);

impl CustomOp1 for AllReduce<'_> {
    fn name(&self) -> &'static str {
        "msa-nccl-all-reduce"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL all-reduce runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("a strided all-reduce buffer".into()))?;
        let src = s.as_cuda_slice::<f32>()?.slice(start..end);
        let stream = self.0.stream();
        let mut dst = stream
            .alloc_zeros::<f32>(end - start)
            .map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
        self.0
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("ncclAllReduce: {e:?}")))?;
        let out = CudaStorage::wrap_cuda_slice(dst, s.device.clone());
        Ok((out, l.shape().clone()))
    }
}
