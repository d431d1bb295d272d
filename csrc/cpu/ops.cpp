// ops.cpp: see ops.h.
#include "cpu/ops.h"

#include <cmath>
#include <cstdlib>
#include <string>

#include "common.h"
#include "cpu/dispatch.h"

namespace lowbit::cpu {
namespace {

void axpy_f32_generic(float* y, float a, const float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void f16_to_f32_generic(const uint16_t* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_fp32(x[i]);
}

void f32_to_f16_generic(const float* x, uint16_t* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = fp32_to_fp16(x[i]);
}

void rmsnorm_generic(const float* x, const float* w, float* y, int64_t n, float eps);

struct HotLoops {
    void (*axpy)(float*, float, const float*, int64_t);
    void (*to_f32)(const uint16_t*, float*, int64_t);
    void (*to_f16)(const float*, uint16_t*, int64_t);
    void (*silu)(const float*, const float*, float*, int64_t);
    void (*gelu)(const float*, const float*, float*, int64_t);
    void (*rmsnorm)(const float*, const float*, float*, int64_t, float);
};

void silu_mul_generic(const float* gate, const float* up, float* out, int64_t n);
void gelu_tanh_mul_generic(const float* gate, const float* up, float* out, int64_t n);

const HotLoops kGeneric{axpy_f32_generic, f16_to_f32_generic, f32_to_f16_generic, silu_mul_generic,
                        gelu_tanh_mul_generic, rmsnorm_generic};
const HotLoops kAvx2{avx2::axpy_f32, avx2::f16_to_f32_row, avx2::f32_to_f16_row, avx2::silu_mul, avx2::gelu_tanh_mul,
                     rmsnorm_generic};
const HotLoops kAvx512{avx2::axpy_f32, avx2::f16_to_f32_row, avx2::f32_to_f16_row, avx512::silu_mul,
                       avx512::gelu_tanh_mul, avx512::rmsnorm};

// The loops of implementation `impl`, or ValueError where this CPU lacks it.
const HotLoops& hot_loops_named(const std::string& impl) {
    const CpuFeatures& f = cpu_features();
    if (impl == "generic" || impl == "scalar") return kGeneric;
    if (impl == "avx2" && f.has_avx2_level()) return kAvx2;
    if (impl == "avx512" && f.has_avx512_level()) return kAvx512;
    throw ValueError(str("CPU op loops '", impl, "': valid choices are generic and ", supported_levels()));
}

// The widest set the CPU has, unless LOWBIT_CPU names a narrower one ("scalar": the portable
// loops, as for the kernels; "avx2").
const HotLoops& hot_loops() {
    static const HotLoops& h = [&]() -> const HotLoops& {
        const char* env = std::getenv("LOWBIT_CPU");
        const std::string want = env ? env : "";
        const CpuFeatures& f = cpu_features();
        if (want == "scalar") return kGeneric;
        if (f.has_avx512_level() && want != "avx2") return kAvx512;
        return f.has_avx2_level() ? kAvx2 : kGeneric;
    }();
    return h;
}

}  // namespace

void rmsnorm(const float* x, const float* w, float* y, int64_t n, float eps) { hot_loops().rmsnorm(x, w, y, n, eps); }

void gated_act_with(const char* impl, const char* act, const float* gate, const float* up, float* out, int64_t n) {
    const HotLoops& h = hot_loops_named(impl);
    LOWBIT_CHECK(std::string(act) == "silu" || std::string(act) == "gelu", ValueError, "gated activation '", act,
                 "' must be silu or gelu");
    (std::string(act) == "silu" ? h.silu : h.gelu)(gate, up, out, n);
}

void rmsnorm_with(const char* impl, const float* x, const float* w, float* y, int64_t n, float eps) {
    hot_loops_named(impl).rmsnorm(x, w, y, n, eps);
}

namespace {
void rmsnorm_generic(const float* x, const float* w, float* y, int64_t n, float eps) {
    double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};   // 8 lanes in double: vectorizable, and no 4-cycle add chain
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; ++k) part[k] += double(x[i + k]) * double(x[i + k]);
    double ss = ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
    for (; i < n; ++i) ss += double(x[i]) * double(x[i]);
    const float scale = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
    if (w) for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale * w[i];
    else for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale;
}
}  // namespace

void rope_cos_sin(double pos, const double* inv_freq, int64_t half, float* cos_sin, float mscale) {
    for (int64_t i = 0; i < half; ++i) {
        const double a = pos * inv_freq[i];
        cos_sin[2 * i] = float(std::cos(a) * double(mscale));
        cos_sin[2 * i + 1] = float(std::sin(a) * double(mscale));
    }
}

void rope(float* x, int64_t n_heads, int64_t head_dim, int64_t n_rot, bool neox, const float* cos_sin) {
    const int64_t half = n_rot / 2;
    for (int64_t h = 0; h < n_heads; ++h) {
        float* xh = x + h * head_dim;
        for (int64_t i = 0; i < half; ++i) {
            const float c = cos_sin[2 * i], s = cos_sin[2 * i + 1];
            float* a = neox ? xh + i : xh + 2 * i;
            float* b = neox ? xh + i + half : xh + 2 * i + 1;
            const float x0 = *a, x1 = *b;
            *a = x0 * c - x1 * s;
            *b = x0 * s + x1 * c;
        }
    }
}

namespace {
void silu_mul_generic(const float* gate, const float* up, float* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        const float g = gate[i];
        out[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
}

void gelu_tanh_mul_generic(const float* gate, const float* up, float* out, int64_t n) {
    constexpr float kSqrt2OverPi = 0.79788456080286535588f;
    for (int64_t i = 0; i < n; ++i) {
        const float g = gate[i];
        out[i] = 0.5f * g * (1.0f + std::tanh(kSqrt2OverPi * (g + 0.044715f * g * g * g))) * up[i];
    }
}

}  // namespace

void silu_mul(const float* gate, const float* up, float* out, int64_t n) { hot_loops().silu(gate, up, out, n); }
void gelu_tanh_mul(const float* gate, const float* up, float* out, int64_t n) { hot_loops().gelu(gate, up, out, n); }

void add_inplace(float* y, const float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void axpy_f32(float* y, float a, const float* x, int64_t n) { hot_loops().axpy(y, a, x, n); }
void f16_to_f32_row(const uint16_t* x, float* y, int64_t n) { hot_loops().to_f32(x, y, n); }
void f32_to_f16_row(const float* x, uint16_t* y, int64_t n) { hot_loops().to_f16(x, y, n); }

}  // namespace lowbit::cpu
