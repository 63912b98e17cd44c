//! What the CPU kernels share: their operands' f32 slices, a strided matrix product,
//! buffers filled in parallel, reductions that give the same bits on every run, and f64
//! copies for the CUDA ops' reference loops.

use candle_core::backend::BackendStorage;
use candle_core::{Result, Tensor};

/// Runs `f` on the f32 slice of a contiguous CPU tensor, without copying it.
pub fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!(
            "expected a CPU tensor, got one on {:?}",
            t.device().location()
        );
    };
    let Some((o1, o2)) = layout.contiguous_offsets() else {
        candle_core::bail!("expected a contiguous tensor of shape {:?}", t.shape());
    };
    f(&cpu.as_slice::<f32>()?[o1..o2])
}

/// `with_slice` for an optional tensor.
pub fn with_opt_slice<R>(
    t: Option<&Tensor>,
    f: impl FnOnce(Option<&[f32]>) -> Result<R>,
) -> Result<R> {
    match t {
        Some(t) => with_slice(t, |s| f(Some(s))),
        None => f(None),
    }
}

/// The f32 slice of a contiguous CPU storage, as custom ops receive their inputs.
pub(crate) fn storage_slice<'a>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
    op: &str,
) -> Result<&'a [f32]> {
    let Some((o1, o2)) = layout.contiguous_offsets() else {
        candle_core::bail!(
            "{op} needs a contiguous input, got shape {:?}",
            layout.shape()
        );
    };
    Ok(&storage.as_slice::<f32>()?[o1..o2])
}

/// The contiguous f32 slice of a storage an in-place op writes.
pub(crate) fn storage_slice_mut<'a>(
    storage: &'a mut candle_core::CpuStorage,
    layout: &candle_core::Layout,
    op: &str,
) -> Result<&'a mut [f32]> {
    let Some((o1, o2)) = layout.contiguous_offsets() else {
        candle_core::bail!(
            "{op} needs a contiguous tensor, got shape {:?}",
            layout.shape()
        );
    };
    match storage {
        candle_core::CpuStorage::F32(v) => Ok(&mut v[o1..o2]),
        other => candle_core::bail!("{op} needs f32, got {:?}", other.dtype()),
    }
}

/// The f32 slices of an (input, weight, bias) op's three storages, once `fits` accepts
/// their dims (input, weight, bias); otherwise an error naming the three shapes.
pub(crate) fn affine_operands<'a>(
    op: &str,
    operands: [(&'a candle_core::CpuStorage, &candle_core::Layout); 3],
    fits: impl FnOnce(&[usize], &[usize], &[usize]) -> bool,
) -> Result<[&'a [f32]; 3]> {
    let [(_, l1), (_, l2), (_, l3)] = operands;
    if !fits(l1.dims(), l2.dims(), l3.dims()) {
        candle_core::bail!(
            "{op}: input {:?}, weight {:?}, bias {:?} do not fit",
            l1.dims(),
            l2.dims(),
            l3.dims()
        );
    }
    let [a, b, c] = operands.map(|(s, l)| storage_slice(s, l, op));
    Ok([a?, b?, c?])
}

/// A gradient with the shape and device of `like`, as a custom op's backward returns it.
pub(crate) fn grad_like(values: Vec<f32>, like: &Tensor) -> Result<Option<Tensor>> {
    Ok(Some(Tensor::from_vec(values, like.shape(), like.device())?))
}

/// candle's thread count, asked once: candle reads /proc/cpuinfo every time it is asked.
pub(crate) fn thread_count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(candle_core::utils::get_num_threads)
}

/// A strided matrix operand: element (i, j) at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

impl Mat {
    /// A row-major matrix whose rows are `rs` apart.
    pub fn rows(ptr: *const f32, rs: usize) -> Self {
        Self { ptr, rs, cs: 1 }
    }

    pub fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// dst (m x n, rows `dst_rs` apart) = [dst +] alpha · lhs (m x k) · rhs (k x n), on the
/// rayon pool when `parallel`, else on this thread.
///
/// # Safety
/// Every operand must address valid memory for its shape and strides; `dst` must not
/// alias the operands and must not be written by another thread meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_into(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    alpha: f32,
    parallel: bool,
) {
    let threads = thread_count();
    let par = if parallel && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs.ptr,
        lhs.cs as isize,
        lhs.rs as isize,
        rhs.ptr,
        rhs.cs as isize,
        rhs.rs as isize,
        1.0,
        alpha,
        false,
        false,
        false,
        par,
    )
}

/// A new buffer of `len` values, filled in parallel: chunk `i` (of `chunk` values, the
/// last one shorter) is zeroed and handed to `fill(i, chunk)`. Unlike `vec![0.0; len]`
/// followed by a parallel pass, no thread zeroes the whole buffer first: on a reused heap
/// block that single-threaded memset costs as much as a cheap kernel itself.
pub fn par_filled(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut v: Vec<f32> = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| {
            for x in c.iter_mut() {
                x.write(0.0);
            }
            // SAFETY: every element of `c` was initialised just above.
            let c = unsafe { &mut *(c as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
            fill(i, c)
        });
    // SAFETY: the chunks cover 0..len and each was initialised in the loop above.
    unsafe { v.set_len(len) };
    v
}

/// The most partial results `ordered_reduce` holds at once.
pub const MAX_GROUPS: usize = 64;

/// A parallel reduction whose result has the same bits on every run and thread count:
/// tasks `0..tasks` are cut into groups of at least `min_per_group` tasks (and at most
/// `MAX_GROUPS` groups; both depend on `tasks` alone), each group is folded in order into
/// its own state (`init`, `body`) and `finish`ed, and the groups' results are added in
/// group order. Rayon's `fold`/`reduce` associate the sums by how work happened to be
/// stolen, which made two identical training runs differ in the last bits.
pub fn ordered_reduce<S, P>(
    tasks: usize,
    min_per_group: usize,
    init: impl Fn() -> S + Sync + Send,
    body: impl Fn(&mut S, usize) + Sync + Send,
    finish: impl Fn(S) -> P + Sync + Send,
    add: impl Fn(P, P) -> P,
) -> Option<P>
where
    P: Send,
{
    use rayon::prelude::*;
    let per_group = min_per_group.max(tasks.div_ceil(MAX_GROUPS)).max(1);
    let partials: Vec<P> = (0..tasks.div_ceil(per_group))
        .into_par_iter()
        .map(|group| {
            let mut state = init();
            for task in group * per_group..((group + 1) * per_group).min(tasks) {
                body(&mut state, task);
            }
            finish(state)
        })
        .collect();
    partials.into_iter().reduce(add)
}

/// A contiguous float storage's values, widened to f64 (the reference loops of the CUDA
/// ops compute in f64).
pub(crate) fn f64_values(s: &candle_core::CpuStorage, l: &candle_core::Layout) -> Result<Vec<f64>> {
    use candle_core::CpuStorage as S;
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("expected a contiguous input".into()))?;
    Ok(match s {
        S::F64(v) => v[a..b].to_vec(),
        S::F32(v) => v[a..b].iter().map(|&x| x as f64).collect(),
        S::F16(v) => v[a..b].iter().map(|x| x.to_f64()).collect(),
        S::BF16(v) => v[a..b].iter().map(|x| x.to_f64()).collect(),
        other => candle_core::bail!("expected floats, not {:?}", other.dtype()),
    })
}

/// `v` as a storage of `like`'s float dtype.
pub(crate) fn from_f64(v: Vec<f64>, like: &candle_core::CpuStorage) -> candle_core::CpuStorage {
    use candle_core::CpuStorage as S;
    match like {
        S::F64(_) => S::F64(v),
        S::F16(_) => S::F16(v.into_iter().map(half::f16::from_f64).collect()),
        S::BF16(_) => S::BF16(v.into_iter().map(half::bf16::from_f64).collect()),
        _ => S::F32(v.into_iter().map(|x| x as f32).collect()),
    }
}
