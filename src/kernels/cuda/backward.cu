// The backward passes of frozen layers on CUDA, each one kernel where candle's composed
// ops take a dozen (model::own_backward runs them through kernels::fused_backward):
// LayerNorm over the last dim, softmax over the last dim, and the GELU (erf) or ReLU
// between an MLP's layers. Inputs and outputs in T (f32, bf16 or f16), arithmetic in f32.
//
// tests/fused_backward_emulated.rs compiles this file for the CPU against cuda_emu.h and
// checks each kernel against the formula in double.

#ifdef MSA_EMULATE
#include "cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#define WARPS 8  // rows per block in the row kernels: one warp each

#include "convert.cuh"

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffff, x, o);
    return x;
}

// dx = rstd (g - mean(g) - xhat mean(g xhat)), with g = dy w and xhat = (x - mean) rstd, per
// row of `cols`. The statistics are recomputed in f32, in two passes (mean, then the
// centred variance) as the forward pass does.
template <typename T>
__device__ void layer_norm(const T* x, const T* w, const T* dy, T* dx, int rows, int cols,
                           float eps) {
    const int row = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    const bool live = row < rows;
    const T* xr = x + (size_t)row * cols;
    const T* gr = dy + (size_t)row * cols;
    float s = 0.f;
    if (live)
        for (int c = lane; c < cols; c += 32) s += to_f(xr[c]);
    const float mean = warp_sum(s) / cols;
    float v = 0.f;
    if (live)
        for (int c = lane; c < cols; c += 32) {
            const float d = to_f(xr[c]) - mean;
            v += d * d;
        }
    const float rstd = 1.f / sqrtf(warp_sum(v) / cols + eps);
    float sg = 0.f, sgx = 0.f;
    if (live)
        for (int c = lane; c < cols; c += 32) {
            const float g = to_f(gr[c]) * to_f(w[c]);
            sg += g;
            sgx += g * (to_f(xr[c]) - mean) * rstd;
        }
    const float mean_g = warp_sum(sg) / cols, mean_gx = warp_sum(sgx) / cols;
    if (live)
        for (int c = lane; c < cols; c += 32) {
            const float g = to_f(gr[c]) * to_f(w[c]);
            const float xhat = (to_f(xr[c]) - mean) * rstd;
            dx[(size_t)row * cols + c] = from_f<T>(rstd * (g - mean_g - xhat * mean_gx));
        }
}

// dx = y (dy - Σ dy y) per row.
template <typename T>
__device__ void softmax(const T* y, const T* dy, T* dx, int rows, int cols) {
    const int row = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    const bool live = row < rows;
    const T* yr = y + (size_t)row * cols;
    const T* gr = dy + (size_t)row * cols;
    float s = 0.f;
    if (live)
        for (int c = lane; c < cols; c += 32) s += to_f(yr[c]) * to_f(gr[c]);
    const float dot = warp_sum(s);
    if (live)
        for (int c = lane; c < cols; c += 32)
            dx[(size_t)row * cols + c] = from_f<T>(to_f(yr[c]) * (to_f(gr[c]) - dot));
}

// dz = dh act'(z): GELU (erf) Φ(z) + z φ(z), or ReLU's step.
template <typename T>
__device__ void activation(const T* z, const T* dh, T* dz, size_t n, int gelu) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float x = to_f(z[i]);
    float d;
    if (gelu)
        d = 0.5f * (1.f + erff(x * 0.70710678118654752f)) + x * 0.39894228040143268f * __expf(-0.5f * x * x);
    else
        d = x > 0.f ? 1.f : 0.f;
    dz[i] = from_f<T>(to_f(dh[i]) * d);
}

#define ENTRIES(T, NAME)                                                                       \
    extern "C" __global__ void layer_norm_bwd_##NAME(const T* x, const T* w, const T* dy,      \
                                                     T* dx, int rows, int cols, float eps) {   \
        layer_norm<T>(x, w, dy, dx, rows, cols, eps);                                          \
    }                                                                                          \
    extern "C" __global__ void softmax_bwd_##NAME(const T* y, const T* dy, T* dx, int rows,    \
                                                  int cols) {                                  \
        softmax<T>(y, dy, dx, rows, cols);                                                     \
    }                                                                                          \
    extern "C" __global__ void activation_bwd_##NAME(const T* z, const T* dh, T* dz,           \
                                                     unsigned long long n, int gelu) {         \
        activation<T>(z, dh, dz, n, gelu);                                                     \
    }

ENTRIES(float, f32)
ENTRIES(__nv_bfloat16, bf16)
ENTRIES(__half, f16)
