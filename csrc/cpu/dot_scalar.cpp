// dot_scalar.cpp: the reference (spec) of every CPU dot product and activation quantizer.
//
// Integer sums per block follow ggml's generic ggml_vec_dot_*_q8_* definitions exactly; the
// float combination per block is written out here and the SIMD kernels of the k-quants repeat
// it operation for operation (see kernels.h). Built for baseline x86-64 without FMA, and with
// contraction off so that `a * b + c` is two roundings everywhere, as in the SIMD files.
#pragma GCC optimize("fp-contract=off")
#include <cmath>
#include <cstring>

#include "common.h"
#include "cpu/kernels.h"

namespace lowbit::cpu::scalar {
namespace {

inline float h2f(uint16_t h) { return fp16_to_fp32(h); }

// Round to nearest, ties to even (the current rounding mode; never changed by lowbit).
inline int round_even(float v) { return int(std::nearbyint(v)); }

inline int sum_q8(const int8_t* q, int len) {
    int s = 0;
    for (int j = 0; j < len; ++j) s += q[j];
    return s;
}

// Q4_K / Q5_K 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes.
inline void scale_min_k4(int j, const uint8_t* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

}  // namespace

// ---- activation quantizers ------------------------------------------------------------------

// q8_0: d = max|x| / 127, q = round_even(x / d) computed as x * (1/d).
void quantize_act_q8_0(const float* x, block_q8_0* y, int n) {
    for (int b = 0; b < n / QK8_0; ++b, x += QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; ++j) amax = std::fmax(amax, std::fabs(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = fp32_to_fp16(d);
        for (int j = 0; j < QK8_0; ++j) y[b].qs[j] = int8_t(round_even(x[j] * id));
    }
}

// q8_K as ggml's quantize_row_q8_K_ref: `max` is the signed value of the first element of
// largest magnitude, iscale = -127 / max (so that element maps to -127), d = 1 / iscale.
void quantize_act_q8_K(const float* x, block_q8_K* y, int n) {
    for (int b = 0; b < n / QK_K; ++b, x += QK_K) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK_K; ++j) {
            const float ax = std::fabs(x[j]);
            if (ax > amax) { amax = ax; max = x[j]; }
        }
        if (amax == 0.0f) {
            std::memset(&y[b], 0, sizeof(block_q8_K));
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; ++j) {
            const int v = round_even(iscale * x[j]);
            y[b].qs[j] = int8_t(v < 127 ? v : 127);
        }
        for (int j = 0; j < QK_K / 16; ++j) y[b].bsums[j] = int16_t(sum_q8(y[b].qs + 16 * j, 16));
        y[b].d = 1.0f / iscale;
    }
}

// ---- legacy 32-blocks x q8_0 -----------------------------------------------------------------

float vec_dot_q4_0(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_q4_0*>(vw);
    const auto* a = static_cast<const block_q8_0*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK4_0; ++b) {
        int sumi = 0;
        for (int j = 0; j < 16; ++j) {
            sumi += ((w[b].qs[j] & 0xF) - 8) * a[b].qs[j];
            sumi += ((w[b].qs[j] >> 4) - 8) * a[b].qs[j + 16];
        }
        sumf += float(sumi) * (h2f(w[b].d) * h2f(a[b].d));
    }
    return sumf;
}

// With q8_0 activations the min term needs the activation block sum (ggml's q8_1 stores it).
float vec_dot_q4_1(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_q4_1*>(vw);
    const auto* a = static_cast<const block_q8_0*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK4_1; ++b) {
        int sumi = 0;
        for (int j = 0; j < 16; ++j) {
            sumi += (w[b].qs[j] & 0xF) * a[b].qs[j];
            sumi += (w[b].qs[j] >> 4) * a[b].qs[j + 16];
        }
        const float da = h2f(a[b].d);
        sumf += float(sumi) * (h2f(w[b].d) * da) + float(sum_q8(a[b].qs, 32)) * (h2f(w[b].m) * da);
    }
    return sumf;
}

float vec_dot_q5_0(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_q5_0*>(vw);
    const auto* a = static_cast<const block_q8_0*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK5_0; ++b) {
        uint32_t qh;
        std::memcpy(&qh, w[b].qh, 4);
        int sumi = 0;
        for (int j = 0; j < 16; ++j) {
            const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
            sumi += (((w[b].qs[j] & 0xF) | h0) - 16) * a[b].qs[j];
            sumi += (((w[b].qs[j] >> 4) | h1) - 16) * a[b].qs[j + 16];
        }
        sumf += float(sumi) * (h2f(w[b].d) * h2f(a[b].d));
    }
    return sumf;
}

float vec_dot_q5_1(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_q5_1*>(vw);
    const auto* a = static_cast<const block_q8_0*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK5_1; ++b) {
        uint32_t qh;
        std::memcpy(&qh, w[b].qh, 4);
        int sumi = 0;
        for (int j = 0; j < 16; ++j) {
            const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
            sumi += ((w[b].qs[j] & 0xF) | h0) * a[b].qs[j];
            sumi += ((w[b].qs[j] >> 4) | h1) * a[b].qs[j + 16];
        }
        const float da = h2f(a[b].d);
        sumf += float(sumi) * (h2f(w[b].d) * da) + float(sum_q8(a[b].qs, 32)) * (h2f(w[b].m) * da);
    }
    return sumf;
}

float vec_dot_q8_0(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_q8_0*>(vw);
    const auto* a = static_cast<const block_q8_0*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK8_0; ++b) {
        int sumi = 0;
        for (int j = 0; j < 32; ++j) sumi += w[b].qs[j] * a[b].qs[j];
        sumf += float(sumi) * (h2f(w[b].d) * h2f(a[b].d));
    }
    return sumf;
}

float vec_dot_iq4_nl(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq4_nl*>(vw);
    const auto* a = static_cast<const block_q8_0*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK4_NL; ++b) {
        int sumi = 0;
        for (int j = 0; j < 16; ++j) {
            sumi += kvalues_iq4nl[w[b].qs[j] & 0xF] * a[b].qs[j];
            sumi += kvalues_iq4nl[w[b].qs[j] >> 4] * a[b].qs[j + 16];
        }
        sumf += float(sumi) * (h2f(w[b].d) * h2f(a[b].d));
    }
    return sumf;
}

// ---- k-quants x q8_K: per super-block integer sums, then `sumf += dall*isum - dmin*summs` ----

float vec_dot_q2_K(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_q2_K*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        int summs = 0;
        for (int j = 0; j < 16; ++j) summs += a[b].bsums[j] * (w[b].scales[j] >> 4);
        int isum = 0;
        for (int s = 0; s < 16; ++s) {  // sub-block s: 16 weights at 16*s
            const int half = s / 8, shift = 2 * ((s % 8) / 2), off = 16 * (s % 2);
            const uint8_t* q2 = w[b].qs + 32 * half + off;
            const int8_t* q8 = a[b].qs + 16 * s;
            int isuml = 0;
            for (int l = 0; l < 16; ++l) isuml += q8[l] * ((q2[l] >> shift) & 3);
            isum += (w[b].scales[s] & 0xF) * isuml;
        }
        const float dall = a[b].d * h2f(w[b].d), dmin = a[b].d * h2f(w[b].dmin);
        sumf += dall * float(isum) - dmin * float(summs);
    }
    return sumf;
}

namespace {
// The 16 signed 6-bit Q3_K sub-block scales (bias 32 removed).
void unpack_q3_K_scales(const uint8_t* packed, int8_t* scales) {
    uint32_t aux[4];
    std::memcpy(aux, packed, 12);
    const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f, tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
    aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
    aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
    aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
    std::memcpy(scales, aux, 16);
    for (int j = 0; j < 16; ++j) scales[j] = int8_t(scales[j] - 32);
}
}  // namespace

float vec_dot_q3_K(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_q3_K*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        int8_t scales[16];
        unpack_q3_K_scales(w[b].scales, scales);
        int isum = 0;
        for (int s = 0; s < 16; ++s) {  // weight index i = 128*half + 32*shift_idx + l
            const int half = s / 8, sh = (s % 8) / 2, off = 16 * (s % 2);
            const uint8_t* q3 = w[b].qs + 32 * half + off;
            const uint8_t* hm = w[b].hmask + off;
            const uint8_t mbit = uint8_t(1u << (4 * half + sh));
            const int8_t* q8 = a[b].qs + 16 * s;
            int isuml = 0;
            for (int l = 0; l < 16; ++l)
                isuml += q8[l] * (((q3[l] >> (2 * sh)) & 3) - ((hm[l] & mbit) ? 0 : 4));
            isum += scales[s] * isuml;
        }
        sumf += (a[b].d * h2f(w[b].d)) * float(isum);
    }
    return sumf;
}

float vec_dot_q4_K(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_q4_K*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        int isum = 0, summs = 0;
        for (int s = 0; s < 8; ++s) {  // sub-block s: 32 weights; nibble (s&1) of qs[32*(s/2)+l]
            int sc, m;
            scale_min_k4(s, w[b].scales, &sc, &m);
            const uint8_t* q4 = w[b].qs + 32 * (s / 2);
            const int8_t* q8 = a[b].qs + 32 * s;
            int isuml = 0;
            for (int l = 0; l < 32; ++l) isuml += q8[l] * ((q4[l] >> (4 * (s & 1))) & 0xF);
            isum += sc * isuml;
            summs += m * (a[b].bsums[2 * s] + a[b].bsums[2 * s + 1]);
        }
        const float dall = a[b].d * h2f(w[b].d), dmin = a[b].d * h2f(w[b].dmin);
        sumf += dall * float(isum) - dmin * float(summs);
    }
    return sumf;
}

float vec_dot_q5_K(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_q5_K*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        int isum = 0, summs = 0;
        for (int s = 0; s < 8; ++s) {  // as Q4_K, fifth bit = bit s of qh[l]
            int sc, m;
            scale_min_k4(s, w[b].scales, &sc, &m);
            const uint8_t* q4 = w[b].qs + 32 * (s / 2);
            const int8_t* q8 = a[b].qs + 32 * s;
            int isuml = 0;
            for (int l = 0; l < 32; ++l) {
                const int q = ((q4[l] >> (4 * (s & 1))) & 0xF) | (((w[b].qh[l] >> s) & 1) << 4);
                isuml += q8[l] * q;
            }
            isum += sc * isuml;
            summs += m * (a[b].bsums[2 * s] + a[b].bsums[2 * s + 1]);
        }
        const float dall = a[b].d * h2f(w[b].d), dmin = a[b].d * h2f(w[b].dmin);
        sumf += dall * float(isum) - dmin * float(summs);
    }
    return sumf;
}

float vec_dot_q6_K(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_q6_K*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        int isum = 0;
        for (int s = 0; s < 16; ++s) {  // weight i = 128*half + 32*quarter + l
            const int half = s / 8, quarter = (s % 8) / 2, off = 16 * (s % 2);
            const uint8_t* ql = w[b].ql + 64 * half + 32 * (quarter & 1) + off;
            const uint8_t* qh = w[b].qh + 32 * half + off;
            const int8_t* q8 = a[b].qs + 16 * s;
            int isuml = 0;
            for (int l = 0; l < 16; ++l) {
                const int q = ((ql[l] >> (4 * (quarter >> 1))) & 0xF) | (((qh[l] >> (2 * quarter)) & 3) << 4);
                isuml += q8[l] * (q - 32);
            }
            isum += w[b].scales[s] * isuml;
        }
        sumf += (a[b].d * h2f(w[b].d)) * float(isum);
    }
    return sumf;
}

float vec_dot_iq4_xs(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq4_xs*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        int isum = 0;
        for (int s = 0; s < 8; ++s) {  // sub-block s: 32 weights, nibbles as Q4_0
            const int ls = ((w[b].scales_l[s / 2] >> (4 * (s % 2))) & 0xF) | (((w[b].scales_h >> (2 * s)) & 3) << 4);
            const uint8_t* q4 = w[b].qs + 16 * s;
            const int8_t* q8 = a[b].qs + 32 * s;
            int isuml = 0;
            for (int j = 0; j < 16; ++j)
                isuml += kvalues_iq4nl[q4[j] & 0xF] * q8[j] + kvalues_iq4nl[q4[j] >> 4] * q8[j + 16];
            isum += (ls - 32) * isuml;
        }
        sumf += (a[b].d * h2f(w[b].d)) * float(isum);
    }
    return sumf;
}

// ---- float weights x float activations: products in f32, sum in double (as ggml) -------------

float vec_dot_f32(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const float*>(vw);
    const auto* a = static_cast<const float*>(va);
    double sum = 0.0;
    for (int i = 0; i < n; ++i) sum += double(w[i] * a[i]);
    return float(sum);
}

float vec_dot_f16(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const uint16_t*>(vw);
    const auto* a = static_cast<const float*>(va);
    double sum = 0.0;
    for (int i = 0; i < n; ++i) sum += double(fp16_to_fp32(w[i]) * a[i]);
    return float(sum);
}

float vec_dot_bf16(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const uint16_t*>(vw);
    const auto* a = static_cast<const float*>(va);
    double sum = 0.0;
    for (int i = 0; i < n; ++i) sum += double(bf16_to_fp32(w[i]) * a[i]);
    return float(sum);
}

const KernelSet& kernel_set() {
    static const KernelSet k = LOWBIT_DOT_ONLY_SET("scalar");
    return k;
}

}  // namespace lowbit::cpu::scalar
