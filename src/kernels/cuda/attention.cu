// Attention softmax(q k^T) v without the attention matrix, for the CUDA build
// (kernels::attention::flash_cuda). q is (BH, NQ, D), k (BH, NK, D), v (BH, NK, HD) and out
// (BH, NQ, HD), all f32 and contiguous. SAM's relative-position bias arrives folded into q and k as extra columns
// (model::rel_pos_columns), so no scale or bias is applied here.
//
// One thread owns one row: a query row in the forward pass and in dq, a key row in dk/dv.
// Keys (or queries) stream through shared memory a tile at a time, and the softmax is
// accumulated online (running maximum and sum), so memory grows with NQ + NK, never with
// NQ x NK. The backward pass recomputes the probabilities from q, k and the row's
// log-sum-exp. kernels::attention::flash runs the same loops on the CPU, where tests check
// them against candle's composed ops.

// The launcher (kernels::attention::flash_cuda) prepends MSA_MAX_D and MSA_MAX_HD, the row widths
// that kernels::attention::flash admits.
#define ROWS 64
#define TILE 32
#define MAX_D MSA_MAX_D
#define MAX_HD MSA_MAX_HD

extern "C" __global__ void attn_fwd(const float* q, const float* k, const float* v,
                                    float* out, float* lse, int nq, int nk, int d, int hd) {
    extern __shared__ float tile[];
    float* kt = tile;             // TILE x d
    float* vt = tile + TILE * d;  // TILE x hd
    const int bh = blockIdx.y;
    const int row = blockIdx.x * ROWS + threadIdx.x;
    const bool live = row < nq;
    const float* qb = q + (size_t)bh * nq * d;
    const float* kb = k + (size_t)bh * nk * d;
    const float* vb = v + (size_t)bh * nk * hd;
    float qr[MAX_D];
    float acc[MAX_HD];
    for (int c = 0; c < d; ++c) qr[c] = live ? qb[(size_t)row * d + c] : 0.f;
    for (int c = 0; c < hd; ++c) acc[c] = 0.f;
    float m = __int_as_float(0xff800000), l = 0.f;  // -infinity, without math.h for NVRTC
    for (int t0 = 0; t0 < nk; t0 += TILE) {
        const int count = min(TILE, nk - t0);
        for (int i = threadIdx.x; i < count * d; i += blockDim.x) kt[i] = kb[(size_t)t0 * d + i];
        for (int i = threadIdx.x; i < count * hd; i += blockDim.x) vt[i] = vb[(size_t)t0 * hd + i];
        __syncthreads();
        if (live) {
            for (int j = 0; j < count; ++j) {
                float s = 0.f;
                for (int c = 0; c < d; ++c) s += qr[c] * kt[j * d + c];
                const float m2 = fmaxf(m, s);
                const float correction = __expf(m - m2);
                const float p = __expf(s - m2);
                l = l * correction + p;
                for (int c = 0; c < hd; ++c) acc[c] = acc[c] * correction + p * vt[j * hd + c];
                m = m2;
            }
        }
        __syncthreads();
    }
    if (live) {
        float* o = out + ((size_t)bh * nq + row) * hd;
        for (int c = 0; c < hd; ++c) o[c] = acc[c] / l;
        lse[(size_t)bh * nq + row] = m + __logf(l);
    }
}

// delta_i = dO_i . O_i, the softmax backward's row term.
extern "C" __global__ void attn_bwd_delta(const float* out, const float* dout, float* delta,
                                          int rows, int hd) {
    const int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= rows) return;
    float s = 0.f;
    for (int c = 0; c < hd; ++c) s += out[(size_t)row * hd + c] * dout[(size_t)row * hd + c];
    delta[row] = s;
}

// dq_i = sum_j p_ij (dO_i . v_j - delta_i) k_j, one thread per query row.
extern "C" __global__ void attn_bwd_dq(const float* q, const float* k, const float* v,
                                       const float* dout, const float* lse,
                                       const float* delta, float* dq, int nq, int nk, int d,
                                       int hd) {
    extern __shared__ float tile[];
    float* kt = tile;
    float* vt = tile + TILE * d;
    const int bh = blockIdx.y;
    const int row = blockIdx.x * ROWS + threadIdx.x;
    const bool live = row < nq;
    const size_t r = (size_t)bh * nq + row;
    const float* kb = k + (size_t)bh * nk * d;
    const float* vb = v + (size_t)bh * nk * hd;
    float qr[MAX_D], g[MAX_D], dor[MAX_HD];
    for (int c = 0; c < d; ++c) {
        qr[c] = live ? q[r * d + c] : 0.f;
        g[c] = 0.f;
    }
    for (int c = 0; c < hd; ++c) dor[c] = live ? dout[r * hd + c] : 0.f;
    const float row_lse = live ? lse[r] : 0.f;
    const float row_delta = live ? delta[r] : 0.f;
    for (int t0 = 0; t0 < nk; t0 += TILE) {
        const int count = min(TILE, nk - t0);
        for (int i = threadIdx.x; i < count * d; i += blockDim.x) kt[i] = kb[(size_t)t0 * d + i];
        for (int i = threadIdx.x; i < count * hd; i += blockDim.x) vt[i] = vb[(size_t)t0 * hd + i];
        __syncthreads();
        if (live) {
            for (int j = 0; j < count; ++j) {
                float s = 0.f, dp = 0.f;
                for (int c = 0; c < d; ++c) s += qr[c] * kt[j * d + c];
                for (int c = 0; c < hd; ++c) dp += dor[c] * vt[j * hd + c];
                const float ds = __expf(s - row_lse) * (dp - row_delta);
                for (int c = 0; c < d; ++c) g[c] += ds * kt[j * d + c];
            }
        }
        __syncthreads();
    }
    if (live) for (int c = 0; c < d; ++c) dq[r * d + c] = g[c];
}

// dv_j = sum_i p_ij dO_i and dk_j = sum_i p_ij (dO_i . v_j - delta_i) q_i, one thread per
// key row; queries stream through shared memory.
extern "C" __global__ void attn_bwd_dkv(const float* q, const float* k, const float* v,
                                        const float* dout, const float* lse,
                                        const float* delta, float* dk, float* dv, int nq,
                                        int nk, int d, int hd) {
    extern __shared__ float tile[];
    float* qt = tile;                   // TILE x d
    float* dot = tile + TILE * d;       // TILE x hd
    float* stats = dot + TILE * hd;     // TILE x 2 (lse, delta)
    const int bh = blockIdx.y;
    const int row = blockIdx.x * ROWS + threadIdx.x;
    const bool live = row < nk;
    const size_t r = (size_t)bh * nk + row;
    const float* qb = q + (size_t)bh * nq * d;
    const float* db = dout + (size_t)bh * nq * hd;
    float kr[MAX_D], gk[MAX_D], vr[MAX_HD], gv[MAX_HD];
    for (int c = 0; c < d; ++c) {
        kr[c] = live ? k[r * d + c] : 0.f;
        gk[c] = 0.f;
    }
    for (int c = 0; c < hd; ++c) {
        vr[c] = live ? v[r * hd + c] : 0.f;
        gv[c] = 0.f;
    }
    for (int t0 = 0; t0 < nq; t0 += TILE) {
        const int count = min(TILE, nq - t0);
        for (int i = threadIdx.x; i < count * d; i += blockDim.x) qt[i] = qb[(size_t)t0 * d + i];
        for (int i = threadIdx.x; i < count * hd; i += blockDim.x) dot[i] = db[(size_t)t0 * hd + i];
        for (int i = threadIdx.x; i < count; i += blockDim.x) {
            stats[2 * i] = lse[(size_t)bh * nq + t0 + i];
            stats[2 * i + 1] = delta[(size_t)bh * nq + t0 + i];
        }
        __syncthreads();
        if (live) {
            for (int i = 0; i < count; ++i) {
                float s = 0.f, dp = 0.f;
                for (int c = 0; c < d; ++c) s += qt[i * d + c] * kr[c];
                for (int c = 0; c < hd; ++c) dp += dot[i * hd + c] * vr[c];
                const float p = __expf(s - stats[2 * i]);
                const float ds = p * (dp - stats[2 * i + 1]);
                for (int c = 0; c < hd; ++c) gv[c] += p * dot[i * hd + c];
                for (int c = 0; c < d; ++c) gk[c] += ds * qt[i * d + c];
            }
        }
        __syncthreads();
    }
    if (live) {
        for (int c = 0; c < d; ++c) dk[r * d + c] = gk[c];
        for (int c = 0; c < hd; ++c) dv[r * hd + c] = gv[c];
    }
}
