// Runs kernels/cuda/flash_tc.cu on the CPU (cuda_emu.h) and compares every output with
// direct sums in double over the same rounded inputs. Prints one line per tensor and exits
// non-zero when one is off. tests/flash_tc_emulated.rs builds and runs it.
#include "flash_tc.cu"

#include <cstdio>
#include <random>

typedef __nv_bfloat16 T;

struct Case {
    int bh, gh, gw;
    bool bias;
};

// The kernels of head width D, by name.
template <int D> struct Kernels;
#define KERNELS(W)                                                                           \
    template <> struct Kernels<W> {                                                          \
        static constexpr auto lse = flash_lse_bf16_d##W;                                     \
        static constexpr auto out = flash_out_bf16_d##W;                                     \
        static constexpr auto delta = flash_delta_bf16_d##W;                                 \
        static constexpr auto dq = flash_dq_bf16_d##W;                                       \
        static constexpr auto dkv = flash_dkv_bf16_d##W;                                     \
    };
KERNELS(16)
KERNELS(32)
KERNELS(64)

static std::vector<T> rounded(std::vector<float>& x) {
    std::vector<T> out;
    for (float& v : x) {
        out.push_back(__float2bfloat16(v));
        v = __bfloat162float(out.back());
    }
    return out;
}

static std::vector<float> normal(size_t n, float sd, std::mt19937& rng) {
    std::normal_distribution<float> dist(0.f, sd);
    std::vector<float> x(n);
    for (float& v : x) v = dist(rng);
    return x;
}

static double max_abs(const std::vector<double>& x) {
    double m = 0;
    for (double v : x) m = std::fmax(m, std::fabs(v));
    return m;
}

// max |got - want| / max |want|; a failure is reported by `ok`.
static bool compare(const char* what, const std::vector<double>& want, const std::vector<float>& got, double tol) {
    double e = 0;
    for (size_t i = 0; i < want.size(); ++i) e = std::fmax(e, std::fabs(got[i] - want[i]));
    const double rel = e / std::fmax(max_abs(want), 1e-30);
    const bool ok = rel < tol && std::isfinite(rel);
    std::printf("%-6s relative error %.3e (tolerance %.1e)%s\n", what, rel, tol, ok ? "" : "  FAILED");
    return ok;
}

static std::vector<float> floats(const std::vector<T>& x) {
    std::vector<float> out;
    for (T v : x) out.push_back(__bfloat162float(v));
    return out;
}

template <int D> static bool run(const Case& cs) {
    const int n = cs.gh * cs.gw, g = cs.gh + cs.gw, bh = cs.bh;
    const float scale = 0.125f;
    std::printf("BH %d, grid %d x %d (%d tokens), head width %d, bias %s\n", bh, cs.gh, cs.gw, n, D,
                cs.bias ? "yes" : "no");
    std::mt19937 rng(7 + n);
    auto qf = normal((size_t)bh * n * D, 1.f, rng), kf = normal((size_t)bh * n * D, 1.f, rng);
    auto vf = normal((size_t)bh * n * D, 1.f, rng), df = normal((size_t)bh * n * D, 1.f, rng);
    auto rel = normal((size_t)bh * n * g, 0.7f, rng);
    auto q = rounded(qf), k = rounded(kf), v = rounded(vf), dout = rounded(df);
    auto relt = rounded(rel);
    const T* relp = cs.bias ? relt.data() : nullptr;

    // Reference, per (head, query): probabilities, output, and every gradient.
    std::vector<double> o_ref((size_t)bh * n * D), lse_ref((size_t)bh * n), dq_ref(o_ref.size()),
        dk_ref(o_ref.size()), dv_ref(o_ref.size()), drel_ref((size_t)bh * n * g, 0.0);
    for (int b = 0; b < bh; ++b)
        for (int i = 0; i < n; ++i) {
            const size_t qi = (size_t)b * n + i;
            std::vector<double> s(n), dp(n);
            double m = -INFINITY;
            for (int j = 0; j < n; ++j) {
                const size_t kj = (size_t)b * n + j;
                double x = 0;
                for (int c = 0; c < D; ++c) x += (double)qf[qi * D + c] * kf[kj * D + c];
                x *= scale;
                if (cs.bias) x += rel[qi * g + j / cs.gw] + rel[qi * g + cs.gh + j % cs.gw];
                s[j] = x;
                m = std::fmax(m, x);
            }
            double l = 0;
            for (int j = 0; j < n; ++j) l += std::exp(s[j] - m);
            lse_ref[qi] = m + std::log(l);
            for (int j = 0; j < n; ++j) s[j] = std::exp(s[j] - lse_ref[qi]);  // now P
            double delta = 0;
            for (int c = 0; c < D; ++c) {
                double acc = 0;
                for (int j = 0; j < n; ++j) acc += s[j] * vf[((size_t)b * n + j) * D + c];
                o_ref[qi * D + c] = acc;
                delta += acc * df[qi * D + c];
            }
            for (int j = 0; j < n; ++j) {
                const size_t kj = (size_t)b * n + j;
                double x = 0;
                for (int c = 0; c < D; ++c) x += (double)df[qi * D + c] * vf[kj * D + c];
                const double ds = s[j] * (x - delta);
                for (int c = 0; c < D; ++c) {
                    dq_ref[qi * D + c] += scale * ds * kf[kj * D + c];
                    dk_ref[kj * D + c] += scale * ds * qf[qi * D + c];
                    dv_ref[kj * D + c] += s[j] * df[qi * D + c];
                }
                if (cs.bias) {
                    drel_ref[qi * g + j / cs.gw] += ds;
                    drel_ref[qi * g + cs.gh + j % cs.gw] += ds;
                }
            }
        }

    const unsigned tiles = (n + ROWS - 1) / ROWS;
    std::vector<T> out((size_t)bh * n * D);
    std::vector<float> dq(out.size()), dk(out.size()), dv(out.size());
    std::vector<float> lse((size_t)bh * n), delta((size_t)bh * n), drel((size_t)bh * n * g);
    emu_launch(tiles, bh, THREADS, [&] {
        Kernels<D>::lse(q.data(), k.data(), relp, lse.data(), n, cs.gh, cs.gw, scale);
    });
    emu_launch(tiles, bh, THREADS, [&] {
        Kernels<D>::out(q.data(), k.data(), v.data(), relp, lse.data(), out.data(), n, cs.gh, cs.gw, scale);
    });
    emu_launch((bh * n + WARPS - 1) / WARPS, 1, THREADS,
               [&] { Kernels<D>::delta(out.data(), dout.data(), delta.data(), bh * n); });
    emu_launch(tiles, bh, THREADS, [&] {
        Kernels<D>::dq(q.data(), k.data(), v.data(), dout.data(), relp, lse.data(), delta.data(),
                      dq.data(), drel.data(), n, cs.gh, cs.gw, scale);
    });
    emu_launch(tiles, bh, THREADS, [&] {
        Kernels<D>::dkv(q.data(), k.data(), v.data(), dout.data(), relp, lse.data(), delta.data(),
                       dk.data(), dv.data(), n, cs.gh, cs.gw, scale);
    });
    // bf16 outputs and bf16 probabilities in the products: about 2^-8 relative.
    bool ok = compare("out", o_ref, floats(out), 1.5e-2);
    ok &= compare("lse", lse_ref, lse, 1e-5);
    ok &= compare("dq", dq_ref, dq, 2e-2);
    ok &= compare("dk", dk_ref, dk, 2e-2);
    ok &= compare("dv", dv_ref, dv, 2e-2);
    if (cs.bias) ok &= compare("drel", drel_ref, drel, 2e-2);
    return ok;
}

int main() {
    // A tail in every tile size (10 x 13 = 130 tokens), SAM's 14 x 14 window, and no bias.
    const Case cases[] = {{2, 10, 13, true}, {1, 14, 14, true}, {2, 7, 10, false}};
    bool ok = true;
    for (const Case& c : cases) ok &= run<64>(c);
    // The narrower heads of small models (the tests' tiny SAM has 16).
    ok &= run<16>({3, 8, 8, true});
    ok &= run<32>({2, 3, 3, true});
    std::printf(ok ? "all match\n" : "MISMATCH\n");
    return ok ? 0 : 1;
}
