// Flash attention on tensor cores for SAM's image encoder, forward and backward:
// softmax(scale q kᵀ + bias) v without the attention matrix, for q, k, v and out of shape
// (BH, N, D) in bf16 or f16 (contiguous; D = 16, 32 or 64), with products on WMMA fragments
// and softmax
// statistics, accumulators and gradients in f32 (kernels::attention::tensor_cores launches it).
//
// SAM's decomposed relative-position bias arrives as per-query terms `rel` (BH, N, GH + GW)
// in the same dtype: a query's GH row terms, then its GW column terms
// (model::rel_pos_columns::rel_terms).
// A key at token k of the GH x GW grid adds rel[q, k / GW] + rel[q, GH + k % GW]; the
// backward pass gives drel, the sum of dS over the keys of each row and of each column.
//
// Each block runs 4 warps; a warp owns 16 rows (query rows, or key rows in dk/dv), and
// streams the other side through shared memory a tile at a time. The forward pass reads
// the keys twice: flash_lse finds each row's log-sum-exp, and flash_out sums the values
// with the exact probabilities, so no accumulator is ever rescaled (WMMA hides which lane
// holds which element). The backward pass recomputes the probabilities from the
// log-sum-exp: dq and drel per query tile, dk and dv per key tile.
//
// tests/flash_tc_emulated.rs compiles this file for the CPU against cuda_emu.h and checks
// every kernel against direct sums.

#ifdef MSA_EMULATE
#include "cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif
using namespace nvcuda;

#define WARPS 4
#define THREADS (WARPS * 32)
#define ROWS (WARPS * 16)  // rows a block owns
#define TK 64              // keys per tile, forward pass
#define TB 32              // keys (dq) or queries (dk, dv) per tile, backward pass
#define LDT (D + 8)        // shared row stride of a T tile, in elements (D: the head width)
#define NEG_INF __int_as_float(0xff800000)

#include "convert.cuh"

typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> Acc;
template <typename T> using RowA = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
template <typename T> using RowB = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>;
template <typename T> using ColB = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;

// Rows [row0, row0 + count) of a (N, D) matrix into a shared tile of stride LDT; rows past n
// are zeros. All threads of the block take part.
template <typename T, int D>
__device__ void load_rows(T* dst, const T* src, int row0, int count, int n) {
    for (int i = threadIdx.x; i < count * D; i += THREADS) {
        const int r = i / D, c = i % D;
        dst[r * LDT + c] = row0 + r < n ? src[(size_t)(row0 + r) * D + c] : from_f<T>(0.f);
    }
}

// The warp's 16 rows of a shared tile as A fragments, one per 16 columns of D.
template <typename T, int D> __device__ void load_strip(RowA<T>* a, const T* tile) {
    for (int kk = 0; kk < D / 16; ++kk) wmma::load_matrix_sync(a[kk], tile + kk * 16, LDT);
}

// out (16 x cols, stride ld, f32) = A (16 x D, fragments) · tileᵀ, tile (cols x D) in shared.
template <typename T, int D>
__device__ void strip_times_tile_t(float* out, int ld, const RowA<T>* a, const T* tile, int cols) {
    for (int j = 0; j < cols / 16; ++j) {
        Acc acc;
        wmma::fill_fragment(acc, 0.f);
        for (int kk = 0; kk < D / 16; ++kk) {
            ColB<T> b;
            wmma::load_matrix_sync(b, tile + j * 16 * LDT + kk * 16, LDT);
            wmma::mma_sync(acc, a[kk], b, acc);
        }
        wmma::store_matrix_sync(out + j * 16, acc, ld, wmma::mem_row_major);
    }
}

// acc (16 x D) += P (16 x cols, shared, stride ldp) · tile (cols x D, shared).
template <typename T, int D>
__device__ void strip_times_tile(Acc* acc, const T* p, int ldp, const T* tile, int cols) {
    for (int kk = 0; kk < cols / 16; ++kk) {
        RowA<T> a;
        wmma::load_matrix_sync(a, p + kk * 16, ldp);
        for (int j = 0; j < D / 16; ++j) {
            RowB<T> b;
            wmma::load_matrix_sync(b, tile + kk * 16 * LDT + j * 16, LDT);
            wmma::mma_sync(acc[j], a, b, acc[j]);
        }
    }
}

// The warp's 16 x D accumulator, times `scale`, into rows [row0, row0 + 16) of out (N, D),
// through a 16 x (D + 4) f32 scratch in shared memory.
template <typename O, int D>
__device__ void store_strip(O* out, Acc* acc, float* scratch, int row0, int n, float scale) {
    const int lane = threadIdx.x % 32;
    for (int j = 0; j < D / 16; ++j)
        wmma::store_matrix_sync(scratch + j * 16, acc[j], D + 4, wmma::mem_row_major);
    __syncwarp();
    for (int i = lane; i < 16 * D; i += 32) {
        const int r = i / D, c = i % D;
        if (row0 + r < n) out[(size_t)(row0 + r) * D + c] = from_f<O>(scratch[r * (D + 4) + c] * scale);
    }
    __syncwarp();
}

// SAM's bias between query row `relq` (null without a bias) and key k.
template <typename T>
__device__ __forceinline__ float bias(const T* relq, int k, int gh, int gw) {
    return relq ? to_f(relq[k / gw]) + to_f(relq[gh + k % gw]) : 0.f;
}

// ---------------------------------------------------------------------------------------
// Forward. Shared: K and V tiles (TK x LDT each), then per warp a 16 x (TK + 4) f32 score
// strip (which first stages the block's queries) and a 16 x (TK + 8) T probability strip.
#define FWD_LDS (TK + 4)
#define FWD_LDP (TK + 8)
static_assert(FWD_LDS >= 64 + 4, "the score strip doubles as the output scratch");

template <typename T, int D> struct Fwd {
    T* ks;
    T* vs;
    float* s;  // this warp's score strip
    T* p;      // this warp's probability strip
    RowA<T> qa[D / 16];
    int row;   // this lane's query row, 16 per warp, two lanes per row
    int half;  // which half of each key tile the lane takes
    bool live;

    // Carves shared memory and loads the warp's queries.
    __device__ Fwd(const T* q, int n, unsigned char* smem) {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        ks = (T*)smem;
        vs = ks + TK * LDT;
        float* scores = (float*)(vs + TK * LDT);
        s = scores + warp * 16 * FWD_LDS;
        p = (T*)(scores + WARPS * 16 * FWD_LDS) + warp * 16 * FWD_LDP;
        load_rows<T, D>((T*)scores, q, blockIdx.x * ROWS, ROWS, n);
        __syncthreads();
        load_strip<T, D>(qa, (T*)scores + warp * 16 * LDT);
        __syncthreads();
        row = blockIdx.x * ROWS + warp * 16 + lane / 2;
        half = lane % 2;
        live = row < n;
    }

    // The scores of the lane's row against key tile t0 (in ks), scaled and biased, one at a
    // time through `f(column, key, score)`; keys past n are skipped.
    template <typename F>
    __device__ void scores(int t0, int n, const T* relq, int gh, int gw, float scale, F f) {
        strip_times_tile_t<T, D>(s, FWD_LDS, qa, ks, TK);
        __syncwarp();
        const int r = threadIdx.x % 32 / 2;
        for (int c = half * (TK / 2); c < (half + 1) * (TK / 2); ++c) {
            const int key = t0 + c;
            if (live && key < n) f(c, key, s[r * FWD_LDS + c] * scale + bias(relq, key, gh, gw));
        }
    }
};

// Each query row's log-sum-exp over the keys.
template <typename T, int D>
__device__ void lse_rows(const T* q, const T* k, const T* rel, float* lse, int n, int gh, int gw,
                         float scale, unsigned char* smem) {
    const size_t base = (size_t)blockIdx.y * n * D;
    Fwd<T, D> f(q + base, n, smem);
    const size_t qi = (size_t)blockIdx.y * n + f.row;
    const T* relq = rel && f.live ? rel + qi * (gh + gw) : 0;
    float m = NEG_INF, l = 0.f;
    for (int t0 = 0; t0 < n; t0 += TK) {
        load_rows<T, D>(f.ks, k + base, t0, TK, n);
        __syncthreads();
        f.scores(t0, n, relq, gh, gw, scale, [&](int, int, float x) {
            const float m2 = fmaxf(m, x);
            l = l * __expf(m - m2) + __expf(x - m2);
            m = m2;
        });
        __syncthreads();
    }
    // Combine the pair's halves: each saw a disjoint half of the keys.
    const float m_other = __shfl_xor_sync(0xffffffff, m, 1);
    const float l_other = __shfl_xor_sync(0xffffffff, l, 1);
    const float mm = fmaxf(m, m_other);
    if (f.live && f.half == 0)
        lse[qi] = mm + __logf(l * __expf(m - mm) + l_other * __expf(m_other - mm));
}

// out = Σ_k p_k v_k with the exact probabilities p_k = exp(score - lse).
template <typename T, int D>
__device__ void out_rows(const T* q, const T* k, const T* v, const T* rel, const float* lse,
                         T* out, int n, int gh, int gw, float scale, unsigned char* smem) {
    const size_t base = (size_t)blockIdx.y * n * D;
    Fwd<T, D> f(q + base, n, smem);
    const size_t qi = (size_t)blockIdx.y * n + f.row;
    const T* relq = rel && f.live ? rel + qi * (gh + gw) : 0;
    const float row_lse = f.live ? lse[qi] : 0.f;
    const int r = threadIdx.x % 32 / 2;
    Acc acc[D / 16];
    for (int j = 0; j < D / 16; ++j) wmma::fill_fragment(acc[j], 0.f);
    for (int t0 = 0; t0 < n; t0 += TK) {
        load_rows<T, D>(f.ks, k + base, t0, TK, n);
        load_rows<T, D>(f.vs, v + base, t0, TK, n);
        __syncthreads();
        for (int c = f.half * (TK / 2); c < (f.half + 1) * (TK / 2); ++c)
            f.p[r * FWD_LDP + c] = from_f<T>(0.f);
        f.scores(t0, n, relq, gh, gw, scale, [&](int c, int, float x) {
            f.p[r * FWD_LDP + c] = from_f<T>(__expf(x - row_lse));
        });
        __syncwarp();
        strip_times_tile<T, D>(acc, f.p, FWD_LDP, f.vs, TK);
        __syncthreads();
    }
    store_strip<T, D>(out + base, acc, f.s, blockIdx.x * ROWS + threadIdx.x / 32 * 16, n, 1.f);
}

// ---------------------------------------------------------------------------------------
// delta_i = dO_i . O_i, one warp per row.
template <typename T, int D>
__device__ void delta_rows(const T* out, const T* dout, float* delta, int rows) {
    const int row = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    float acc = 0.f;
    if (row < rows)
        for (int c = lane; c < D; c += 32) acc += to_f(out[(size_t)row * D + c]) * to_f(dout[(size_t)row * D + c]);
    for (int o = 16; o > 0; o /= 2) acc += __shfl_xor_sync(0xffffffff, acc, o);
    if (row < rows && lane == 0) delta[row] = acc;
}

// ---------------------------------------------------------------------------------------
// dq = scale Σ_k dS k and drel, per query tile. Shared: K and V tiles (TB x LDT), per warp
// a 16 x (2 TB + 8) f32 block holding the score and dP strips (later the output scratch),
// per warp a 16 x (TB + 8) T dS strip, then the block's drel rows (ROWS x (GH + GW), f32).
#define BWD_LDS (TB + 4)
#define BWD_LDP (TB + 8)
#define BWD_WARP_F32 (16 * (2 * BWD_LDS))

template <typename T, int D>
__device__ void dq_drel(const T* q, const T* k, const T* v, const T* dout, const T* rel,
                        const float* lse, const float* delta, float* dq, float* drel, int n, int gh,
                        int gw, float scale, unsigned char* smem) {
    const int bh = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int block0 = blockIdx.x * ROWS, row0 = block0 + warp * 16;
    const size_t base = (size_t)bh * n * D;
    const int g = gh + gw;
    T* ks = (T*)smem;
    T* vs = ks + TB * LDT;
    float* f32s = (float*)(vs + TB * LDT);  // WARPS x BWD_WARP_F32
    T* dss = (T*)(f32s + WARPS * BWD_WARP_F32);
    float* drel_s = (float*)(dss + WARPS * 16 * BWD_LDP);  // ROWS x g
    float* s = f32s + warp * BWD_WARP_F32;
    float* dp = s + 16 * BWD_LDS;
    T* ds = dss + warp * 16 * BWD_LDP;

    // The queries and output gradients of the block, staged through the K and V tiles'
    // space (ROWS x LDT each fits in TB x LDT twice over).
    RowA<T> qa[D / 16], da[D / 16];
    load_rows<T, D>(ks, q + base, block0, ROWS, n);
    __syncthreads();
    load_strip<T, D>(qa, ks + warp * 16 * LDT);
    __syncthreads();
    load_rows<T, D>(ks, dout + base, block0, ROWS, n);
    __syncthreads();
    load_strip<T, D>(da, ks + warp * 16 * LDT);
    if (rel)
        for (int i = threadIdx.x; i < ROWS * g; i += THREADS) drel_s[i] = 0.f;
    __syncthreads();

    const int r = lane / 2, half = lane % 2, qrow = row0 + r;
    const bool live = qrow < n;
    const size_t qi = (size_t)bh * n + qrow;
    const T* relq = rel && live ? rel + qi * g : 0;
    float* drel_row = drel_s + (warp * 16 + r) * g;
    const float row_lse = live ? lse[qi] : 0.f, row_delta = live ? delta[qi] : 0.f;
    Acc acc[D / 16];
    for (int j = 0; j < D / 16; ++j) wmma::fill_fragment(acc[j], 0.f);
    for (int t0 = 0; t0 < n; t0 += TB) {
        load_rows<T, D>(ks, k + base, t0, TB, n);
        load_rows<T, D>(vs, v + base, t0, TB, n);
        __syncthreads();
        strip_times_tile_t<T, D>(s, BWD_LDS, qa, ks, TB);
        strip_times_tile_t<T, D>(dp, BWD_LDS, da, vs, TB);
        __syncwarp();
        for (int c = half * (TB / 2); c < (half + 1) * (TB / 2); ++c) {
            const int key = t0 + c;
            float d = 0.f;
            if (live && key < n) {
                const float pr = __expf(s[r * BWD_LDS + c] * scale + bias(relq, key, gh, gw) - row_lse);
                d = pr * (dp[r * BWD_LDS + c] - row_delta);
                if (rel) {
                    atomicAdd(drel_row + key / gw, d);
                    atomicAdd(drel_row + gh + key % gw, d);
                }
            }
            ds[r * BWD_LDP + c] = from_f<T>(d);
        }
        __syncwarp();
        strip_times_tile<T, D>(acc, ds, BWD_LDP, ks, TB);
        __syncthreads();
    }
    store_strip<float, D>(dq + base, acc, s, row0, n, scale);
    if (rel)
        for (int i = threadIdx.x; i < ROWS * g; i += THREADS) {
            const int row = block0 + i / g;
            if (row < n) drel[((size_t)bh * n + row) * g + i % g] = drel_s[i];
        }
}

// ---------------------------------------------------------------------------------------
// dk = scale Σ_q dSᵀ q and dv = Σ_q Pᵀ dO, per key tile (a warp's 16 rows are keys).
// Shared: Q and dO tiles (TB x LDT), the tile's lse and delta, per warp the f32 block of
// the Sᵀ and dPᵀ strips and a T strip for Pᵀ, then dSᵀ.
template <typename T, int D>
__device__ void dk_dv(const T* q, const T* k, const T* v, const T* dout, const T* rel,
                      const float* lse, const float* delta, float* dk, float* dv, int n, int gh, int gw,
                      float scale, unsigned char* smem) {
    const int bh = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int block0 = blockIdx.x * ROWS, row0 = block0 + warp * 16;
    const size_t base = (size_t)bh * n * D;
    const int g = gh + gw;
    T* qs = (T*)smem;
    T* dos = qs + TB * LDT;
    float* stats = (float*)(dos + TB * LDT);  // TB lse, then TB delta
    float* f32s = stats + 2 * TB;
    T* pts = (T*)(f32s + WARPS * BWD_WARP_F32);
    float* st = f32s + warp * BWD_WARP_F32;
    float* dpt = st + 16 * BWD_LDS;
    T* pt = pts + warp * 16 * BWD_LDP;

    RowA<T> ka[D / 16], va[D / 16];
    load_rows<T, D>(qs, k + base, block0, ROWS, n);
    __syncthreads();
    load_strip<T, D>(ka, qs + warp * 16 * LDT);
    __syncthreads();
    load_rows<T, D>(qs, v + base, block0, ROWS, n);
    __syncthreads();
    load_strip<T, D>(va, qs + warp * 16 * LDT);
    __syncthreads();

    const int r = lane / 2, half = lane % 2, key = row0 + r;
    const bool live = key < n;
    Acc gk[D / 16], gv[D / 16];
    for (int j = 0; j < D / 16; ++j) {
        wmma::fill_fragment(gk[j], 0.f);
        wmma::fill_fragment(gv[j], 0.f);
    }
    for (int t0 = 0; t0 < n; t0 += TB) {
        load_rows<T, D>(qs, q + base, t0, TB, n);
        load_rows<T, D>(dos, dout + base, t0, TB, n);
        for (int i = threadIdx.x; i < TB; i += THREADS) {
            const bool in = t0 + i < n;
            stats[i] = in ? lse[(size_t)bh * n + t0 + i] : 0.f;
            stats[TB + i] = in ? delta[(size_t)bh * n + t0 + i] : 0.f;
        }
        __syncthreads();
        strip_times_tile_t<T, D>(st, BWD_LDS, ka, qs, TB);
        strip_times_tile_t<T, D>(dpt, BWD_LDS, va, dos, TB);
        __syncwarp();
        float pr[TB / 2];
        for (int i = 0; i < TB / 2; ++i) {
            const int c = half * (TB / 2) + i, query = t0 + c;
            pr[i] = 0.f;
            if (live && query < n) {
                const T* relq = rel ? rel + ((size_t)bh * n + query) * g : 0;
                pr[i] = __expf(st[r * BWD_LDS + c] * scale + bias(relq, key, gh, gw) - stats[c]);
            }
            pt[r * BWD_LDP + c] = from_f<T>(pr[i]);
        }
        __syncwarp();
        strip_times_tile<T, D>(gv, pt, BWD_LDP, dos, TB);
        __syncwarp();
        for (int i = 0; i < TB / 2; ++i) {
            const int c = half * (TB / 2) + i;
            pt[r * BWD_LDP + c] = from_f<T>(pr[i] * (dpt[r * BWD_LDS + c] - stats[TB + c]));
        }
        __syncwarp();
        strip_times_tile<T, D>(gk, pt, BWD_LDP, qs, TB);
        __syncthreads();
    }
    store_strip<float, D>(dk + base, gk, st, row0, n, scale);
    store_strip<float, D>(dv + base, gv, st, row0, n, 1.f);
}

// ---------------------------------------------------------------------------------------
// Entry points, one per dtype. The launcher gives every kernel THREADS threads and the
// dynamic shared memory its layout above needs.
#define ENTRIES(T, NAME, D)                                                                       \
    extern "C" __global__ void __launch_bounds__(THREADS)                                      \
        flash_lse_##NAME##_d##D(const T* q, const T* k, const T* rel, float* lse, int n, int gh,      \
                         int gw, float scale) {                                                \
        extern __shared__ __align__(128) unsigned char smem[];                                 \
        lse_rows<T, D>(q, k, rel, lse, n, gh, gw, scale, smem);                                   \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(THREADS)                                      \
        flash_out_##NAME##_d##D(const T* q, const T* k, const T* v, const T* rel, const float* lse,   \
                         T* out, int n, int gh, int gw, float scale) {                         \
        extern __shared__ __align__(128) unsigned char smem[];                                 \
        out_rows<T, D>(q, k, v, rel, lse, out, n, gh, gw, scale, smem);                           \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(THREADS)                                      \
        flash_delta_##NAME##_d##D(const T* out, const T* dout, float* delta, int rows) {              \
        delta_rows<T, D>(out, dout, delta, rows);                                                 \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(THREADS)                                      \
        flash_dq_##NAME##_d##D(const T* q, const T* k, const T* v, const T* dout, const T* rel,       \
                        const float* lse, const float* delta, float* dq, float* drel, int n,   \
                        int gh, int gw, float scale) {                                         \
        extern __shared__ __align__(128) unsigned char smem[];                                 \
        dq_drel<T, D>(q, k, v, dout, rel, lse, delta, dq, drel, n, gh, gw, scale, smem);          \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(THREADS)                                      \
        flash_dkv_##NAME##_d##D(const T* q, const T* k, const T* v, const T* dout, const T* rel,      \
                         const float* lse, const float* delta, float* dk, float* dv, int n,    \
                         int gh, int gw, float scale) {                                        \
        extern __shared__ __align__(128) unsigned char smem[];                                 \
        dk_dv<T, D>(q, k, v, dout, rel, lse, delta, dk, dv, n, gh, gw, scale, smem);              \
    }

ENTRIES(__nv_bfloat16, bf16, 16)
ENTRIES(__nv_bfloat16, bf16, 32)
ENTRIES(__nv_bfloat16, bf16, 64)
ENTRIES(__half, f16, 16)
ENTRIES(__half, f16, 32)
ENTRIES(__half, f16, 64)
