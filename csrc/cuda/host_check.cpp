// host_check.cpp: the host check of cuda/quant_hd.h (contract in cuda/host_check.h).
// Blocks are random bytes with their scale fields overwritten by finite values (set_scales), so
// every code and grid index occurs; activations come from the CPU's own q8_0 / q8_K quantizers
// and are converted to block_q8a without loss (a q8_K super-block gives 8 chunks of its scale).
#include "cuda/host_check.h"

#include <cmath>
#include <cstring>
#include <random>

#include "common.h"
#include "cpu/kernels.h"
#include "cpu/ops.h"
#include "cuda/grid_tables_host.h"
#include "cuda/kv_hd.h"
#include "quant/types.h"

namespace lowbit {
namespace {

using cuda::block_q8a;
using cuda::Fmt;
using cuda::FormatCheck;
using Rng = std::mt19937_64;

float uniform(Rng& rng, float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }

void put16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }

// Offsets of the fp16 scale fields of each format's block (the rest of a block is codes, any
// byte valid). IQ1_M, MXFP4 and NVFP4 keep their scales in other encodings (set_scales).
std::vector<int> fp16_fields(GGMLType t) {
    switch (t) {
        case GGMLType::Q4_1: case GGMLType::Q5_1: case GGMLType::Q4_K: case GGMLType::Q5_K: return {0, 2};
        case GGMLType::Q2_K: return {80, 82};
        case GGMLType::Q3_K: return {108};
        case GGMLType::Q6_K: return {208};
        case GGMLType::TQ1_0: return {52};
        case GGMLType::TQ2_0: return {64};
        case GGMLType::IQ1_M: case GGMLType::MXFP4: case GGMLType::NVFP4: return {};
        default: return {0};
    }
}

// Overwrite a block's scales: all 1.0 (unit) or random finite values of either sign for the
// second field of Q4_1 / Q5_1 (their min), positive otherwise.
void set_scales(GGMLType t, uint8_t* b, Rng& rng, bool unit) {
    const std::vector<int> fields = fp16_fields(t);
    for (size_t i = 0; i < fields.size(); ++i) {
        float v = unit ? 1.0f : uniform(rng, 0.002f, 0.05f);
        if (!unit && i == 1 && (t == GGMLType::Q4_1 || t == GGMLType::Q5_1)) v = uniform(rng, -0.5f, 0.5f);
        put16(b + fields[i], fp32_to_fp16(v));
    }
    if (t == GGMLType::MXFP4) b[0] = unit ? 128 : uint8_t(std::uniform_int_distribution<int>(112, 135)(rng));
    if (t == GGMLType::NVFP4)
        for (int s = 0; s < 4; ++s) b[s] = unit ? 0x40 : uint8_t(std::uniform_int_distribution<int>(0, 0x7F)(rng));
    if (t == GGMLType::IQ1_M) {   // the fp16 scale lives in the top nibbles of the four scale words
        const uint16_t d = fp32_to_fp16(unit ? 1.0f : uniform(rng, 0.002f, 0.05f));
        for (int k = 0; k < 4; ++k) {
            uint16_t w;
            std::memcpy(&w, b + 48 + 2 * k, 2);
            w = uint16_t((w & 0x0FFF) | (((d >> (4 * k)) & 0xF) << 12));
            std::memcpy(b + 48 + 2 * k, &w, 2);
        }
    }
}

// A row of nb random valid blocks of format F (float formats: random finite values).
template <class F>
std::vector<uint8_t> random_row(int nb, Rng& rng, bool unit) {
    std::vector<uint8_t> row(size_t(nb) * F::kBytes);
    if constexpr (F::kFloatAct) {
        for (int i = 0; i < nb * 32; ++i) {
            const float v = uniform(rng, -2.0f, 2.0f);
            if (F::kType == GGMLType::F32) std::memcpy(row.data() + 4 * i, &v, 4);
            else put16(row.data() + 2 * i, F::kType == GGMLType::F16 ? fp32_to_fp16(v) : fp32_to_bf16(v));
        }
    } else {
        for (auto& byte : row) byte = uint8_t(rng());
        for (int b = 0; b < nb; ++b) set_scales(F::kType, row.data() + size_t(b) * F::kBytes, rng, unit);
    }
    return row;
}

// Activations as the CPU quantizes them for `fmt`, and the same values as block_q8a chunks.
struct Acts {
    std::vector<uint8_t> cpu;       // block_q8_0[n/32] or block_q8_K[n/256]
    std::vector<block_q8a> chunks;  // n/32
};

Acts make_acts(cpu::ActFormat fmt, int n, Rng& rng, bool small_unit) {
    std::vector<float> x(n);
    for (auto& v : x) v = uniform(rng, -1.0f, 1.0f);
    Acts a;
    a.chunks.resize(n / 32);
    if (fmt == cpu::ActFormat::Q8_0) {
        std::vector<block_q8_0> q(n / 32);
        cpu::scalar::quantize_act_q8_0(x.data(), q.data(), n);
        for (int c = 0; c < n / 32; ++c) {
            if (small_unit) {
                q[c].d = fp32_to_fp16(1.0f);
                for (auto& v : q[c].qs) v = int8_t(std::uniform_int_distribution<int>(-4, 4)(rng));
            }
            a.chunks[c].d = fp16_to_fp32(q[c].d);
            std::memcpy(a.chunks[c].qs, q[c].qs, 32);
            a.chunks[c].sum = cuda::sum_i8(q[c].qs, 32);
        }
        a.cpu.resize(q.size() * sizeof(block_q8_0));
        std::memcpy(a.cpu.data(), q.data(), a.cpu.size());
    } else {
        std::vector<block_q8_K> q(n / QK_K);
        cpu::scalar::quantize_act_q8_K(x.data(), q.data(), n);
        for (int b = 0; b < n / QK_K; ++b) {
            if (small_unit) {
                q[b].d = 1.0f;
                for (auto& v : q[b].qs) v = int8_t(std::uniform_int_distribution<int>(-4, 4)(rng));
                for (int j = 0; j < 16; ++j) q[b].bsums[j] = int16_t(cuda::sum_i8(q[b].qs + 16 * j, 16));
            }
            for (int c = 0; c < 8; ++c) {
                block_q8a& o = a.chunks[8 * b + c];
                o.d = q[b].d;
                std::memcpy(o.qs, q[b].qs + 32 * c, 32);
                o.sum = q[b].bsums[2 * c] + q[b].bsums[2 * c + 1];
            }
        }
        a.cpu.resize(q.size() * sizeof(block_q8_K));
        std::memcpy(a.cpu.data(), q.data(), a.cpu.size());
    }
    return a;
}

// The Fmt<T> row dot: chunk contributions summed in order.
template <class F>
float row_dot(const uint8_t* row, int nb, const Acts& a, const cuda::GridTables& t) {
    float s = 0.0f;
    for (int b = 0; b < nb; ++b)
        for (int c = 0; c < F::kChunks; ++c) s += F::dot(row + size_t(b) * F::kBytes, c, a.chunks[b * F::kChunks + c], t);
    return s;
}

template <class F>
FormatCheck check_format(Rng& rng, int nb) {
    const cuda::GridTables tables = cuda::host_grid_tables();
    const int n = nb * F::kElems;
    const QuantType& qt = quant_type(F::kType);
    const cpu::VecDotFn cpu_dot = cpu::kernel_for(cpu::scalar::kernel_set(), F::kType);
    LOWBIT_CHECK(cpu_dot != nullptr, ValueError, "no scalar CPU dot for ", qt.name);
    FormatCheck out;
    out.name = qt.name;

    // decode: bit for bit against the dequantizer
    const std::vector<uint8_t> row = random_row<F>(nb, rng, false);
    std::vector<float> ref(n), mine(n);
    qt.to_float(row.data(), ref.data(), n);
    for (int b = 0; b < nb; ++b)
        for (int c = 0; c < F::kChunks; ++c) F::decode(row.data() + size_t(b) * F::kBytes, c, &mine[size_t(b) * F::kElems + 32 * c], tables);
    int64_t mismatches = 0;
    for (int i = 0; i < n; ++i) mismatches += fp32_to_bits(ref[i]) != fp32_to_bits(mine[i]);
    out.decode_mismatches = mismatches;
    out.values = n;

    if constexpr (F::kFloatAct) {
        std::vector<float> x(n);
        for (auto& v : x) v = uniform(rng, -1.0f, 1.0f);
        float s = 0.0f;
        double mag = 0.0;
        for (int b = 0; b < nb; ++b) s += F::dotf(row.data() + size_t(b) * F::kBytes, 0, x.data() + 32 * b);
        for (int i = 0; i < n; ++i) mag += std::fabs(double(ref[i]) * x[i]);
        out.dot_rel_err = std::fabs(double(s) - double(cpu_dot(n, row.data(), x.data()))) / mag;
    } else {
        const cpu::ActFormat fmt = qt.vec_dot_type == GGMLType::Q8_K ? cpu::ActFormat::Q8_K : cpu::ActFormat::Q8_0;
        // tier 1 with random scales, relative to sum |w_i a_i| of the decoded values
        const Acts a = make_acts(fmt, n, rng, false);
        double mag = 0.0;
        for (int c = 0; c < n / 32; ++c)
            for (int j = 0; j < 32; ++j) mag += std::fabs(double(ref[32 * c + j]) * a.chunks[c].d * a.chunks[c].qs[j]);
        const float got = row_dot<F>(row.data(), nb, a, tables), want = cpu_dot(n, row.data(), a.cpu.data());
        out.dot_rel_err = mag > 0 ? std::fabs(double(got) - double(want)) / mag : std::fabs(double(got) - double(want));
        // exact: unit scales, activations in [-4, 4] with scale 1: every partial sum is an integer
        // (times the grid's power-of-two factor) far below 2^24, so any integer slip shows
        int64_t int_mismatches = 0;
        for (int rep = 0; rep < 4; ++rep) {
            const std::vector<uint8_t> urow = random_row<F>(nb, rng, true);
            const Acts ua = make_acts(fmt, n, rng, true);
            int_mismatches += row_dot<F>(urow.data(), nb, ua, tables) != cpu_dot(n, urow.data(), ua.cpu.data());
        }
        out.dot_int_mismatches = int_mismatches;
    }
    return out;
}


// Calls fn(Fmt<T>{}) for a device format (the host twin of cuda/dispatch.cuh).
template <class Fn>
void dispatch_host(GGMLType type, Fn&& fn) {
    switch (type) {
#define LOWBIT_HOST_CASE(T) case GGMLType::T: fn(Fmt<GGMLType::T>{}); return;
        LOWBIT_CUDA_FORMATS(LOWBIT_HOST_CASE)
#undef LOWBIT_HOST_CASE
        default: break;
    }
    throw ValueError(str("no CUDA format for GGML type ", uint32_t(type)));
}

}  // namespace

namespace cuda {

std::vector<uint8_t> random_blocks(GGMLType type, int64_t nblocks, uint64_t seed) {
    LOWBIT_CHECK(nblocks > 0 && nblocks < (int64_t(1) << 31), ValueError, "random_blocks: bad count ", nblocks);
    Rng rng(seed);
    std::vector<uint8_t> out;
    dispatch_host(type, [&](auto f) { out = random_row<decltype(f)>(int(nblocks), rng, false); });
    return out;
}

void quantize_act_host(const float* x, block_q8a* out, int64_t cols) {
    for (int64_t b = 0; b < cols / 32; ++b) {
        float amax = 0.0f;
        for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[32 * b + j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; ++j) {
            const int q = int(std::nearbyint(x[32 * b + j] * id));
            out[b].qs[j] = int8_t(q);
            sum += q;
        }
        out[b].d = d;
        out[b].sum = sum;
    }
}

void emulate_matvec(GGMLType type, const uint8_t* w, int64_t rows, int64_t cols, const float* x, float* y,
                    double* mag) {
    const GridTables t = host_grid_tables();
    std::vector<block_q8a> act(size_t(cols / 32));
    quantize_act_host(x, act.data(), cols);
    dispatch_host(type, [&](auto f) {
        using F = decltype(f);
        LOWBIT_CHECK(cols % F::kElems == 0, ValueError, "emulate_matvec: cols ", cols, " is not a multiple of ", F::kElems);
        const int64_t nb = cols / F::kElems, row_bytes = nb * F::kBytes;
        float dec[32];
        for (int64_t r = 0; r < rows; ++r) {
            const uint8_t* row = w + r * row_bytes;
            float s = 0.0f;
            double m = 0.0;
            for (int64_t b = 0; b < nb; ++b)
                for (int c = 0; c < F::kChunks; ++c) {
                    const uint8_t* blk = row + b * F::kBytes;
                    const int64_t k = b * F::kChunks + c;
                    if constexpr (F::kFloatAct) s += F::dotf(blk, c, x + 32 * k);
                    else s += F::dot(blk, c, act[size_t(k)], t);
                    F::decode(blk, c, dec, t);
                    for (int j = 0; j < 32; ++j) m += std::fabs(double(dec[j]) * x[32 * k + j]);
                }
            y[r] = s;
            mag[r] = m;
        }
    });
}

std::vector<FormatCheck> host_check(uint64_t seed, int blocks) {
    LOWBIT_CHECK(blocks >= 1 && blocks <= 4096, ValueError, "cuda_host_check: blocks must be in [1, 4096], got ", blocks);
    Rng rng(seed);
    std::vector<FormatCheck> out;
#define LOWBIT_CHECK_FORMAT(T) out.push_back(check_format<Fmt<GGMLType::T>>(rng, blocks));
    LOWBIT_CUDA_FORMATS(LOWBIT_CHECK_FORMAT)
#undef LOWBIT_CHECK_FORMAT
    return out;
}

KvCheck kv_host_check(uint64_t seed, int64_t rows) {
    LOWBIT_CHECK(rows >= 1 && rows <= 4096, ValueError, "kv_host_check: rows must be in [1, 4096], got ", rows);
    constexpr int64_t D = 128;   // one head row: 4 q8_0 blocks
    Rng rng(seed);
    std::vector<float> x(size_t(rows * D));
    for (int64_t r = 0; r < rows; ++r) {   // magnitudes from 1e-6 to 1e3 per row; row 0's first block all zero
        const float mag = std::pow(10.0f, uniform(rng, -6.0f, 3.0f));
        for (int64_t e = 0; e < D; ++e) x[size_t(r * D + e)] = r == 0 && e < 32 ? 0.0f : uniform(rng, -mag, mag);
    }
    if (rows > 1)   // row 1's first block: scale 1 exactly and codes on .5 ties (half away from zero, not to even)
        for (int64_t e = 0; e < 32; ++e) x[size_t(D + e)] = e == 0 ? 127.0f : float(e) - 16.5f;
    KvCheck out;
    out.values = rows * D;
    const int64_t q8_bytes = KvQ8::row_bytes(D);
    std::vector<uint8_t> cpu_q8(size_t(rows * q8_bytes)), dev_q8(cpu_q8.size());
    std::vector<float> cpu_back(x.size());
    std::vector<uint16_t> cpu_f16(x.size());
    quant_type(GGMLType::Q8_0).from_float(x.data(), cpu_q8.data(), rows * D, nullptr);   // what KVCache::store_row does
    quant_type(GGMLType::Q8_0).to_float(cpu_q8.data(), cpu_back.data(), rows * D);
    cpu::f32_to_f16_row(x.data(), cpu_f16.data(), rows * D);
    for (int64_t b = 0; b < rows * D / 32; ++b) KvQ8::quantize_block(x.data() + b * 32, dev_q8.data() + b * KvQ8::kBlock);
    for (size_t i = 0; i < cpu_q8.size(); ++i) out.q8_quantize_mismatches += cpu_q8[i] != dev_q8[i];
    for (int64_t r = 0; r < rows; ++r) {
        const uint8_t* q8_row = cpu_q8.data() + r * q8_bytes;
        const uint8_t* f16_row = reinterpret_cast<const uint8_t*>(cpu_f16.data() + r * D);
        for (int64_t e = 0; e < D; ++e) {
            const size_t i = size_t(r * D + e);
            out.q8_decode_mismatches += fp32_to_bits(KvQ8::at(q8_row, e)) != fp32_to_bits(cpu_back[i]);
            out.f16_mismatches += f2h_bits(x[i]) != cpu_f16[i] ||
                                  fp32_to_bits(KvF16::at(f16_row, e)) != fp32_to_bits(fp16_to_fp32(cpu_f16[i]));
        }
    }
    return out;
}

}  // namespace cuda
}  // namespace lowbit
