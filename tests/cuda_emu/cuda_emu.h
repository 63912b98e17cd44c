// Just enough of CUDA to run this project's WMMA kernels on the CPU, for tests: each CUDA
// thread of a block is an OS thread, __syncthreads a barrier, and a WMMA fragment a whole
// 16 x 16 matrix that every lane of a warp holds and computes (lane 0 alone stores it).
// __syncwarp waits for the whole block, which is equivalent for kernels whose warps all pass
// the same __syncwarp calls. Blocks run one after the other, sharing one shared-memory
// buffer. Compile with -std=c++20 -DMSA_EMULATE.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __align__(x)
#define __shared__

struct emu_dim3 {
    unsigned x = 0, y = 0, z = 0;
};
inline thread_local emu_dim3 threadIdx, blockIdx;
inline emu_dim3 blockDim;
inline thread_local std::barrier<>* emu_barrier = nullptr;
alignas(128) inline unsigned char smem[256 * 1024];
inline float emu_exchange[1024];

inline void __syncthreads() { emu_barrier->arrive_and_wait(); }
inline void __syncwarp() { __syncthreads(); }

inline float __shfl_xor_sync(unsigned, float v, int mask) {
    emu_exchange[threadIdx.x] = v;
    __syncthreads();
    const float other = emu_exchange[threadIdx.x ^ mask];
    __syncthreads();
    return other;
}

inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
using std::fmaxf;

struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 h) {
    const uint32_t u = uint32_t(h.bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {  // round to nearest even
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {0x7fc0};
    u += 0x7fffu + ((u >> 16) & 1u);
    return {uint16_t(u >> 16)};
}
struct __half {
    _Float16 value;
};
inline float __half2float(__half h) { return float(h.value); }
inline __half __float2half(float f) { return {_Float16(f)}; }

inline float emu_to_float(float x) { return x; }
inline float emu_to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
inline float emu_to_float(__half x) { return __half2float(x); }

namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
    float v[16 * 16];
};

template <class Use, class T, class Layout, class P>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const P* p, unsigned ldm) {
    constexpr bool rows = std::is_same_v<Layout, row_major>;
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c)
            f.v[r * 16 + c] = emu_to_float(rows ? p[r * ldm + c] : p[c * ldm + r]);
}

template <class T>
void fill_fragment(fragment<accumulator, 16, 16, 16, T>& f, float x) {
    for (float& e : f.v) e = x;
}

template <class T, class A, class B>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
              const fragment<matrix_a, 16, 16, 16, T, A>& a,
              const fragment<matrix_b, 16, 16, 16, T, B>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
    float out[256];
    for (int r = 0; r < 16; ++r)
        for (int col = 0; col < 16; ++col) {
            float s = c.v[r * 16 + col];
            for (int k = 0; k < 16; ++k) s += a.v[r * 16 + k] * b.v[k * 16 + col];
            out[r * 16 + col] = s;
        }
    std::memcpy(d.v, out, sizeof out);
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout) {
    if (threadIdx.x % 32 != 0) return;
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c)
            (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.v[r * 16 + c];
}
}  // namespace nvcuda::wmma

// Runs `kernel` (a callable with no arguments) over a grid of blocks of `threads` threads.
template <class F>
void emu_launch(unsigned grid_x, unsigned grid_y, unsigned threads, F kernel) {
    for (unsigned by = 0; by < grid_y; ++by)
        for (unsigned bx = 0; bx < grid_x; ++bx) {
            std::barrier<> bar(threads);
            blockDim = {threads, 1, 1};
            std::vector<std::thread> pool;
            for (unsigned t = 0; t < threads; ++t)
                pool.emplace_back([&, t] {
                    threadIdx = {t, 0, 0};
                    blockIdx = {bx, by, 0};
                    emu_barrier = &bar;
                    kernel();
                });
            for (auto& th : pool) th.join();
        }
}
