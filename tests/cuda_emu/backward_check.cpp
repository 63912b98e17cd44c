// Runs kernels/cuda/backward.cu on the CPU (cuda_emu.h) and compares each kernel with its
// formula in double over the same rounded inputs, in f32 and bf16. Prints one line per
// check and exits non-zero when one is off. tests/fused_backward_emulated.rs runs it.
#include "backward.cu"

#include <cstdio>
#include <random>

static float round_to(float x, float) { return x; }
static float round_to(float x, __nv_bfloat16) { return __bfloat162float(__float2bfloat16(x)); }

// The entry points by type, for the templated check.
static void layer_norm_bwd_dispatch(const float* x, const float* w, const float* g, float* o, int r, int c, float e) {
    layer_norm_bwd_f32(x, w, g, o, r, c, e);
}
static void layer_norm_bwd_dispatch(const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* g,
                                    __nv_bfloat16* o, int r, int c, float e) {
    layer_norm_bwd_bf16(x, w, g, o, r, c, e);
}
static void softmax_bwd_dispatch(const float* y, const float* g, float* o, int r, int c) { softmax_bwd_f32(y, g, o, r, c); }
static void softmax_bwd_dispatch(const __nv_bfloat16* y, const __nv_bfloat16* g, __nv_bfloat16* o, int r, int c) {
    softmax_bwd_bf16(y, g, o, r, c);
}
static void activation_bwd_dispatch(const float* z, const float* g, float* o, size_t n, int gelu) {
    activation_bwd_f32(z, g, o, n, gelu);
}
static void activation_bwd_dispatch(const __nv_bfloat16* z, const __nv_bfloat16* g, __nv_bfloat16* o, size_t n,
                                    int gelu) {
    activation_bwd_bf16(z, g, o, n, gelu);
}

template <typename T> static std::vector<T> make(std::vector<float>& x) {
    std::vector<T> out;
    for (float& v : x) {
        v = round_to(v, T{});
        out.push_back(from_f<T>(v));
    }
    return out;
}

static bool report(const char* what, const char* type, const std::vector<double>& want,
                   const std::vector<float>& got, double tol) {
    double e = 0, m = 1e-30;
    for (size_t i = 0; i < want.size(); ++i) {
        e = std::fmax(e, std::fabs(got[i] - want[i]));
        m = std::fmax(m, std::fabs(want[i]));
    }
    const bool ok = e / m < tol;
    std::printf("%-10s %-5s relative error %.3e (tolerance %.1e)%s\n", what, type, e / m, tol,
                ok ? "" : "  FAILED");
    return ok;
}

template <typename T> static std::vector<float> floats(const std::vector<T>& x) {
    std::vector<float> out;
    for (const T& v : x) out.push_back(to_f(v));
    return out;
}

template <typename T> static bool check(const char* type, double tol, int rows, int cols) {
    std::mt19937 rng(cols);
    std::normal_distribution<float> nd(0.f, 1.f);
    auto draw = [&](size_t n, float mean) {
        std::vector<float> v(n);
        for (float& x : v) x = mean + nd(rng);
        return v;
    };
    const size_t n = (size_t)rows * cols;
    auto xf = draw(n, 0.5f), wf = draw(cols, 1.f), gf = draw(n, 0.f);
    auto x = make<T>(xf), w = make<T>(wf), g = make<T>(gf);
    std::vector<T> out(n);
    const unsigned blocks = (rows + WARPS - 1) / WARPS;
    bool ok = true;

    // LayerNorm
    const float eps = 1e-6f;
    emu_launch(blocks, 1, WARPS * 32,
               [&] { layer_norm_bwd_dispatch(x.data(), w.data(), g.data(), out.data(), rows, cols, eps); });
    std::vector<double> want(n);
    for (int r = 0; r < rows; ++r) {
        const float* xr = &xf[(size_t)r * cols];
        const float* gr = &gf[(size_t)r * cols];
        double mean = 0, var = 0, mg = 0, mgx = 0;
        for (int c = 0; c < cols; ++c) mean += xr[c];
        mean /= cols;
        for (int c = 0; c < cols; ++c) var += (xr[c] - mean) * (xr[c] - mean);
        const double rstd = 1 / std::sqrt(var / cols + eps);
        for (int c = 0; c < cols; ++c) {
            mg += (double)gr[c] * wf[c];
            mgx += (double)gr[c] * wf[c] * (xr[c] - mean) * rstd;
        }
        mg /= cols, mgx /= cols;
        for (int c = 0; c < cols; ++c)
            want[(size_t)r * cols + c] = rstd * ((double)gr[c] * wf[c] - mg - (xr[c] - mean) * rstd * mgx);
    }
    ok &= report("layer_norm", type, want, floats(out), tol);

    // softmax: y is a softmax of x.
    std::vector<float> yf(n);
    for (int r = 0; r < rows; ++r) {
        double m = -INFINITY, l = 0;
        for (int c = 0; c < cols; ++c) m = std::fmax(m, xf[(size_t)r * cols + c]);
        for (int c = 0; c < cols; ++c) l += std::exp(xf[(size_t)r * cols + c] - m);
        for (int c = 0; c < cols; ++c) yf[(size_t)r * cols + c] = std::exp(xf[(size_t)r * cols + c] - m) / l;
    }
    auto y = make<T>(yf);
    emu_launch(blocks, 1, WARPS * 32, [&] { softmax_bwd_dispatch(y.data(), g.data(), out.data(), rows, cols); });
    for (int r = 0; r < rows; ++r) {
        double dot = 0;
        for (int c = 0; c < cols; ++c) dot += (double)yf[(size_t)r * cols + c] * gf[(size_t)r * cols + c];
        for (int c = 0; c < cols; ++c)
            want[(size_t)r * cols + c] = yf[(size_t)r * cols + c] * (gf[(size_t)r * cols + c] - dot);
    }
    ok &= report("softmax", type, want, floats(out), tol);

    // GELU and ReLU between an MLP's layers.
    for (int gelu = 0; gelu < 2; ++gelu) {
        emu_launch((n + 255) / 256, 1, 256,
                   [&] { activation_bwd_dispatch(x.data(), g.data(), out.data(), n, gelu); });
        for (size_t i = 0; i < n; ++i) {
            const double z = xf[i];
            const double d = gelu ? 0.5 * (1 + std::erf(z / std::sqrt(2.0))) + z * std::exp(-0.5 * z * z) / std::sqrt(2 * M_PI)
                                  : (z > 0 ? 1.0 : 0.0);
            want[i] = gf[i] * d;
        }
        ok &= report(gelu ? "gelu" : "relu", type, want, floats(out), tol);
    }
    return ok;
}

int main() {
    bool ok = true;
    // Rows that leave a partial block, widths below, between and above the warp's 32.
    for (int cols : {20, 70, 768}) {
        ok &= check<float>("f32", 1e-5, 37, cols);
        ok &= check<__nv_bfloat16>("bf16", 1.5e-2, 37, cols);
    }
    std::printf(ok ? "all match\n" : "MISMATCH\n");
    return ok ? 0 : 1;
}
