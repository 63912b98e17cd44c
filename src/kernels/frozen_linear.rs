//! A Linear layer with frozen weights as one custom op on CPU: the bias is accumulated by
//! the gemm, and the backward pass returns the input's gradient alone. candle's matmul
//! backward also computes the weight's gradient, which a frozen layer throws away: a third
//! of the layer's backward work and a weight-sized tensor per layer kept until the end.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};

pub struct FrozenLinear {
    /// (out, in), contiguous f32 on CPU.
    pub weight: Tensor,
    /// (out), contiguous f32 on CPU.
    pub bias: Option<Tensor>,
}

/// Runs `f` on the f32 slice of a contiguous CPU tensor, without copying it.
fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("frozen-linear weights must be on the CPU");
    };
    let Some((o1, o2)) = layout.contiguous_offsets() else {
        candle_core::bail!("frozen-linear weights must be contiguous");
    };
    f(&cpu.as_slice::<f32>()?[o1..o2])
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((o1, o2)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen-linear needs a contiguous input");
        };
        let x = &storage.as_slice::<f32>()?[o1..o2];
        let (out_dim, in_dim) = self.weight.dims2()?;
        let rows = x.len() / in_dim.max(1);
        let mut y = match &self.bias {
            Some(b) => with_slice(b, |b| {
                let mut y = Vec::with_capacity(rows * out_dim);
                for _ in 0..rows {
                    y.extend_from_slice(b);
                }
                Ok(y)
            })?,
            None => vec![0f32; rows * out_dim],
        };
        let threads = candle_core::utils::get_num_threads();
        let par = if threads > 1 {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        };
        let has_bias = self.bias.is_some();
        with_slice(&self.weight, |w| {
            // SAFETY: y is rows x out, x is rows x in, w is out x in (read as its transpose).
            unsafe {
                gemm(
                    rows,
                    out_dim,
                    in_dim,
                    y.as_mut_ptr(),
                    1,
                    out_dim as isize,
                    has_bias,
                    x.as_ptr(),
                    1,
                    in_dim as isize,
                    w.as_ptr(),
                    in_dim as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                );
            }
            Ok(())
        })?;
        let mut dims = layout.shape().dims().to_vec();
        let last = dims.len() - 1;
        dims[last] = out_dim;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let out_dim = self.weight.dim(0)?;
        let rows = grad.elem_count() / out_dim;
        let g = grad
            .contiguous()?
            .reshape((rows, out_dim))?
            .matmul(&self.weight)?;
        Ok(Some(g.reshape(arg.shape())?))
    }
}
