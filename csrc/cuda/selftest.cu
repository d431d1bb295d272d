// selftest.cu: every CUDA kernel on fresh random data against the CPU path (cuda/selftest.h).
//
// Errors are relative, each against the scale that bounds it:
//   matvec/T      vs emulation: |y_dev - y_emu| / sum|w x| per row, y_emu = the same Fmt<T> dots on the
//                 host after the same activation quantization (only the float summation order
//                 differs: tol 1e-5); vs the CPU matvec (its own q8_0 / q8_K activations): tol 1e-2.
//   dequant/T     f32 values whose bits differ from quant/reference.h (tol 0; -fmad=false).
//   matmul/T      |y - y_ref| / sum|w x| against double sums of the decoded weights (f16 rounding
//                 of the weights, and of x with cuBLAS: tol 3e-3).
//   ops           max |dev - cpu| relative to max |cpu| (tol per op below), kv_write bit for bit.
// Bandwidth: the mat-vec over >= 1 GiB of weights (a small random matrix replicated on the device,
// so no cache holds it), median of 20 timed launches after 3 warm-ups, counting weight + activation
// bytes; "copy" is a 1 GiB device-to-device copy counting read + written bytes.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <random>
#include <tuple>
#include <vector>

#include "cpu/matmul.h"
#include "cpu/ops.h"
#include "cpu/threadpool.h"
#include "cuda/host_check.h"
#include "cuda/kv_hd.h"
#include "cuda/ops.cuh"
#include "cuda/selftest.h"
#include "cuda/device_plan.h"
#include "quant/types.h"

namespace lowbit::cuda {
namespace {

using Rng = std::mt19937_64;

std::vector<float> random_floats(size_t n, Rng& rng, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> u(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = u(rng);
    return v;
}

DeviceBuffer to_device(const void* host, size_t bytes) {
    DeviceBuffer b(bytes);
    b.upload(host, bytes);
    return b;
}
template <typename T>
DeviceBuffer to_device(const std::vector<T>& v) { return to_device(v.data(), v.size() * sizeof(T)); }

template <typename T>
std::vector<T> from_device(const DeviceBuffer& b, size_t n) {
    std::vector<T> v(n);
    LOWBIT_CUDA_CHECK(cudaDeviceSynchronize());
    b.download(v.data(), n * sizeof(T));
    return v;
}

double max_abs(const std::vector<float>& v) {
    double m = 0;
    for (float x : v) m = std::max(m, double(std::fabs(x)));
    return m;
}

// max |a - b| / max |b| (NaN in a counts as an infinite error)
double rel_max(const std::vector<float>& a, const std::vector<float>& b) {
    double e = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        const double d = std::fabs(double(a[i]) - double(b[i]));
        e = std::max(e, std::isnan(d) ? INFINITY : d);
    }
    const double m = max_abs(b);
    return m > 0 ? e / m : e;
}

struct Timer {
    cudaEvent_t a, b;
    Timer() { LOWBIT_CUDA_CHECK(cudaEventCreate(&a)); LOWBIT_CUDA_CHECK(cudaEventCreate(&b)); }
    ~Timer() { cudaEventDestroy(a); cudaEventDestroy(b); }
    template <class Fn>
    double median_ms(Fn&& fn, int warm, int reps) {
        for (int i = 0; i < warm; ++i) fn();
        std::vector<float> ms(reps);
        for (int i = 0; i < reps; ++i) {
            LOWBIT_CUDA_CHECK(cudaEventRecord(a));
            fn();
            LOWBIT_CUDA_CHECK(cudaEventRecord(b));
            LOWBIT_CUDA_CHECK(cudaEventSynchronize(b));
            LOWBIT_CUDA_CHECK(cudaEventElapsedTime(&ms[i], a, b));
        }
        std::sort(ms.begin(), ms.end());
        return ms[reps / 2];
    }
};

constexpr size_t kBenchBytes = size_t(1) << 30;

// Correctness of the mat-vec of `type` at an odd shape, and (bandwidth) its speed over 1 GiB.
void check_matvec(GGMLType type, Rng& rng, cpu::ThreadPool& pool, DeviceBuffer* bench, SelfTestReport& r) {
    const QuantType& qt = quant_type(type);
    const int64_t elems = qt.block_elems == 1 ? 32 : qt.block_elems;
    const int64_t rows = 1027, cols = elems == 32 ? 4096 + 32 * 3 : 4096 + 256 * 3;
    const int64_t nb = cols / elems, row_bytes = device_row_bytes(type, cols);
    const std::vector<uint8_t> w = random_blocks(type, rows * nb, rng());
    const std::vector<float> x = random_floats(size_t(cols), rng);

    DeviceBuffer dw = to_device(w), dx = to_device(x), dy(rows * sizeof(float)), dact(cols / 32 * sizeof(block_q8a));
    matvec(dw.as<uint8_t>(), type, rows, cols, dx.as<float>(), dact.as<block_q8a>(), dy.as<float>(), nullptr);
    const std::vector<float> y = from_device<float>(dy, size_t(rows));

    std::vector<float> y_emu(rows), y_cpu(rows);
    std::vector<double> mag(rows);
    emulate_matvec(type, w.data(), rows, cols, x.data(), y_emu.data(), mag.data());
    cpu::matvec(w.data(), type, rows, cols, x.data(), y_cpu.data(), pool, cpu::ActPrecision::Q8);
    double e_emu = 0, e_cpu = 0;
    for (int64_t i = 0; i < rows; ++i) {
        const double m = mag[i] > 0 ? mag[i] : 1.0;
        const double de = std::fabs(double(y[i]) - y_emu[i]) / m, dc = std::fabs(double(y[i]) - y_cpu[i]) / m;
        e_emu = std::max(e_emu, std::isnan(de) ? INFINITY : de);
        e_cpu = std::max(e_cpu, std::isnan(dc) ? INFINITY : dc);
    }

    double gbs = 0;
    if (bench) {
        // fill the bench buffer with copies of the test matrix, then time rows_big rows of it
        const size_t unit = size_t(rows * row_bytes);
        const int64_t rows_big = int64_t(kBenchBytes / size_t(row_bytes));
        for (size_t off = 0; off < size_t(rows_big * row_bytes); off += unit)
            LOWBIT_CUDA_CHECK(cudaMemcpy(bench->as<uint8_t>() + off, dw.as<uint8_t>(),
                                         std::min(unit, size_t(rows_big * row_bytes) - off), cudaMemcpyDeviceToDevice));
        DeviceBuffer dy_big(rows_big * sizeof(float));
        Timer t;
        const double ms = t.median_ms([&] {
            matvec(bench->as<uint8_t>(), type, rows_big, cols, dx.as<float>(), dact.as<block_q8a>(), dy_big.as<float>(), nullptr);
        }, 3, 20);
        gbs = double(rows_big * row_bytes + cols * 4) / (ms * 1e6);
    }
    r.entries.push_back({str("matvec/", qt.name), e_emu, 1e-5, gbs,
                         str(rows, "x", cols, ": vs host emulation (same arithmetic); bandwidth over ",
                             kBenchBytes >> 20, " MiB")});
    r.entries.push_back({str("matvec_cpu/", qt.name), e_cpu, 1e-2, 0,
                         str(rows, "x", cols, ": vs cpu::matvec (q8 activations), relative to sum|w x|")});

    // dequantize: bit for bit in f32, and the f16 output equal to the f32 value rounded
    std::vector<float> ref(size_t(rows * cols));
    dequantize_rows(qt, w.data(), ref.data(), rows, cols);
    DeviceBuffer df(ref.size() * sizeof(float)), dh(ref.size() * sizeof(__half));
    dequantize(dw.as<uint8_t>(), type, rows, cols, df.as<float>(), nullptr);
    dequantize(dw.as<uint8_t>(), type, rows, cols, dh.as<__half>(), nullptr);
    const std::vector<float> got = from_device<float>(df, ref.size());
    const std::vector<uint16_t> got16 = from_device<uint16_t>(dh, ref.size());
    int64_t bad = 0, bad16 = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        bad += fp32_to_bits(got[i]) != fp32_to_bits(ref[i]);
        bad16 += got16[i] != fp32_to_fp16(ref[i]) && !(std::isnan(ref[i]));
    }
    r.entries.push_back({str("dequant/", qt.name), double(bad + bad16), 0, 0,
                         str("values of ", ref.size(), " whose f32 bits (or f16 rounding) differ from the CPU dequantizer")});
}

// Prefill mat-mat at an odd shape against double sums of the decoded weights.
void check_matmul(GGMLType type, Rng& rng, SelfTestReport& r) {
    const QuantType& qt = quant_type(type);
    const int64_t elems = qt.block_elems == 1 ? 32 : qt.block_elems;
    const int64_t rows = 301, cols = elems == 32 ? 1024 + 96 : 1024 + 256, n = 37;
    const std::vector<uint8_t> w = random_blocks(type, rows * (cols / elems), rng());
    const std::vector<float> x = random_floats(size_t(n * cols), rng);
    DeviceBuffer dw = to_device(w), dx = to_device(x), dy(n * rows * sizeof(float));
    matmul(dw.as<uint8_t>(), type, rows, cols, dx.as<float>(), n, dy.as<float>(), nullptr);
    const std::vector<float> y = from_device<float>(dy, size_t(n * rows));
    std::vector<float> wf(size_t(rows * cols));
    dequantize_rows(qt, w.data(), wf.data(), rows, cols);
    double err = 0;
    for (int64_t i = 0; i < n; ++i)
        for (int64_t o = 0; o < rows; ++o) {
            double s = 0, m = 0;
            for (int64_t k = 0; k < cols; ++k) {
                const double p = double(wf[o * cols + k]) * x[i * cols + k];
                s += p;
                m += std::fabs(p);
            }
            const double e = std::fabs(y[i * rows + o] - s) / (m > 0 ? m : 1.0);
            err = std::max(err, std::isnan(e) ? INFINITY : e);
        }
    r.entries.push_back({str("matmul/", qt.name), err, 3e-3, 0,
                         str(n, "x", cols, " . ", rows, "x", cols, "^T via ", matmul_uses_cublas() ? "cuBLAS" : "tiled kernel",
                             ", vs double sums of the decoded weights")});
}

void check_ops(Rng& rng, SelfTestReport& r) {
    {   // RMSNorm, 3 rows of an odd width
        const int64_t rows = 3, n = 2053;
        const std::vector<float> x = random_floats(size_t(rows * n), rng, -3, 3), w = random_floats(size_t(n), rng);
        DeviceBuffer dx = to_device(x), dw = to_device(w), dy(x.size() * sizeof(float));
        rmsnorm(dx.as<float>(), dw.as<float>(), dy.as<float>(), rows, n, 1e-6f, nullptr);
        std::vector<float> ref(x.size());
        for (int64_t i = 0; i < rows; ++i) cpu::rmsnorm(x.data() + i * n, w.data(), ref.data() + i * n, n, 1e-6f);
        r.entries.push_back({"rmsnorm", rel_max(from_device<float>(dy, x.size()), ref), 1e-6, 0, "3x2053 vs cpu::rmsnorm"});
    }
    {   // softmax with a scale, against double
        const int64_t rows = 5, n = 3001;
        const float scale = 0.37f;
        const std::vector<float> x = random_floats(size_t(rows * n), rng, -20, 20);
        DeviceBuffer dx = to_device(x);
        softmax(dx.as<float>(), rows, n, scale, nullptr);
        std::vector<float> ref(x.size());
        for (int64_t i = 0; i < rows; ++i) {
            double m = -INFINITY, s = 0;
            for (int64_t j = 0; j < n; ++j) m = std::max(m, double(scale * x[i * n + j]));
            for (int64_t j = 0; j < n; ++j) s += std::exp(double(scale * x[i * n + j]) - m);
            for (int64_t j = 0; j < n; ++j) ref[i * n + j] = float(std::exp(double(scale * x[i * n + j]) - m) / s);
        }
        r.entries.push_back({"softmax", rel_max(from_device<float>(dx, x.size()), ref), 1e-5, 0, "5x3001 vs double"});
    }
    for (const bool neox : {false, true}) {   // RoPE, partial rotation, YaRN-like inv_freq and mscale
        const int64_t n_tok = 7, n_heads = 6, head_dim = 128, n_rot = 96, half = n_rot / 2;
        const float mscale = 1.137f;
        std::vector<double> inv_freq(half);
        for (int64_t i = 0; i < half; ++i) inv_freq[i] = std::pow(500000.0, -2.0 * double(i) / double(n_rot)) * (i % 3 ? 1.0 : 0.25);
        std::vector<int32_t> pos(n_tok);
        for (int64_t t = 0; t < n_tok; ++t) pos[t] = int32_t(rng() % 100000);
        const std::vector<float> x = random_floats(size_t(n_tok * n_heads * head_dim), rng, -2, 2);
        DeviceBuffer dx = to_device(x), dp = to_device(pos), df = to_device(inv_freq);
        rope(dx.as<float>(), n_tok, n_heads, head_dim, n_rot, neox, dp.as<int32_t>(), df.as<double>(), mscale, nullptr);
        std::vector<float> ref = x;
        std::vector<float> cs(static_cast<size_t>(n_rot));
        for (int64_t t = 0; t < n_tok; ++t) {
            cpu::rope_cos_sin(double(pos[t]), inv_freq.data(), half, cs.data(), mscale);
            cpu::rope(ref.data() + t * n_heads * head_dim, n_heads, head_dim, n_rot, neox, cs.data());
        }
        r.entries.push_back({neox ? "rope_neox" : "rope_normal", rel_max(from_device<float>(dx, x.size()), ref), 1e-6, 0,
                             "7 tokens x 6 heads x 128 (96 rotated), positions < 1e5, vs cpu::rope"});
    }
    {   // gated activations
        const int64_t n = 10007;
        const std::vector<float> g = random_floats(size_t(n), rng, -8, 8), u = random_floats(size_t(n), rng);
        DeviceBuffer dg = to_device(g), du = to_device(u), d1(n * sizeof(float)), d2(n * sizeof(float));
        silu_mul(dg.as<float>(), du.as<float>(), d1.as<float>(), n, nullptr);
        gelu_tanh_mul(dg.as<float>(), du.as<float>(), d2.as<float>(), n, nullptr);
        std::vector<float> r1(static_cast<size_t>(n)), r2(static_cast<size_t>(n));
        cpu::silu_mul(g.data(), u.data(), r1.data(), n);
        cpu::gelu_tanh_mul(g.data(), u.data(), r2.data(), n);
        r.entries.push_back({"silu_mul", rel_max(from_device<float>(d1, size_t(n)), r1), 2e-6, 0, "10007 vs cpu::silu_mul"});
        r.entries.push_back({"gelu_tanh_mul", rel_max(from_device<float>(d2, size_t(n)), r2), 2e-6, 0,
                             "10007 vs cpu::gelu_tanh_mul"});
    }
    {   // KV writes at an offset, then decode and prefill attention over the cache, f16 and q8_0
        // (GQA 8:2, 1000 cached positions: 4 splits)
        const int64_t n_head = 8, n_kv_head = 2, d = 128, n_kv = 1000, width = n_kv_head * d;
        const std::vector<float> kf = random_floats(size_t(n_kv * width), rng, -2, 2), vf = random_floats(size_t(n_kv * width), rng, -2, 2);
        const std::vector<float> q = random_floats(size_t(n_head * d), rng, -2, 2);
        DeviceBuffer dkf = to_device(kf), dvf = to_device(vf), dq = to_device(q);
        std::vector<int32_t> positions(static_cast<size_t>(n_kv));
        for (int64_t j = 0; j < n_kv; ++j) positions[size_t(j)] = int32_t(j);
        DeviceBuffer dpos = to_device(positions);
        const int32_t* pos = dpos.as<int32_t>();   // pos + j: positions j, j + 1, ...
        const float scale = 1.0f / std::sqrt(float(d));
        const int64_t n_tok = 40;
        const std::vector<float> qs = random_floats(size_t(n_tok * n_head * d), rng, -2, 2);
        for (const KvFormat format : {KvFormat::F16, KvFormat::Q8_0}) {
            const bool f16 = format == KvFormat::F16;
            const char* fname = f16 ? "f16" : "q8_0";
            const int64_t row = kv_row_bytes(format, d) * n_kv_head;   // bytes of one position
            DeviceBuffer dk(size_t(n_kv * row)), dv(size_t(n_kv * row));
            kv_write(format, dkf.as<float>(), dk.as<uint8_t>(), 600, width, pos, nullptr);   // two writes: 0..599, 600..999
            kv_write(format, dkf.as<float>() + 600 * width, dk.as<uint8_t>(), n_kv - 600, width, pos + 600, nullptr);
            kv_write(format, dvf.as<float>(), dv.as<uint8_t>(), n_kv, width, pos, nullptr);
            // The CPU cache's rows (model/kv_cache.cpp: f32_to_f16_row, or the q8_0 quantizer) and their values.
            std::vector<uint8_t> ck(size_t(n_kv * row)), cv(ck.size());
            std::vector<float> kdec(kf.size()), vdec(vf.size());
            if (f16) {
                cpu::f32_to_f16_row(kf.data(), reinterpret_cast<uint16_t*>(ck.data()), int64_t(kf.size()));
                cpu::f32_to_f16_row(vf.data(), reinterpret_cast<uint16_t*>(cv.data()), int64_t(vf.size()));
                cpu::f16_to_f32_row(reinterpret_cast<const uint16_t*>(ck.data()), kdec.data(), int64_t(kf.size()));
                cpu::f16_to_f32_row(reinterpret_cast<const uint16_t*>(cv.data()), vdec.data(), int64_t(vf.size()));
            } else {
                const QuantType& q8 = quant_type(GGMLType::Q8_0);
                q8.from_float(kf.data(), ck.data(), int64_t(kf.size()), nullptr);
                q8.from_float(vf.data(), cv.data(), int64_t(vf.size()), nullptr);
                q8.to_float(ck.data(), kdec.data(), int64_t(kf.size()));
                q8.to_float(cv.data(), vdec.data(), int64_t(vf.size()));
            }
            const std::vector<uint8_t> gk = from_device<uint8_t>(dk, ck.size()), gv = from_device<uint8_t>(dv, cv.size());
            int64_t bad = 0;
            for (size_t i = 0; i < ck.size(); ++i) bad += (gk[i] != ck[i]) + (gv[i] != cv[i]);
            r.entries.push_back({str("kv_write_", fname), double(bad), 0, 0,
                                 str("1000x256 (two writes) vs the CPU cache's ", fname, " rows, bit for bit")});

            // out row (h) of a query at position p seeing keys max(0, p - window + 1) .. p, in double
            auto reference = [&](const float* qt, int64_t p, int64_t window, float softcap, float* out) {
                const int64_t first = window > 0 ? std::max<int64_t>(0, p - window + 1) : 0;
                for (int64_t h = 0; h < n_head; ++h) {
                    const int64_t kvh = h / (n_head / n_kv_head);
                    std::vector<double> pr(static_cast<size_t>(p + 1 - first));
                    double m = -INFINITY, sum = 0;
                    for (int64_t j = first; j <= p; ++j) {
                        double dot = 0;
                        for (int64_t e = 0; e < d; ++e) dot += double(qt[h * d + e]) * kdec[size_t(j * width + kvh * d + e)];
                        double sc = double(scale) * dot;
                        if (softcap > 0.0f) sc = double(softcap) * std::tanh(sc / double(softcap));
                        pr[size_t(j - first)] = sc;
                        m = std::max(m, sc);
                    }
                    for (auto& v : pr) { v = std::exp(v - m); sum += v; }
                    for (int64_t e = 0; e < d; ++e) {
                        double o = 0;
                        for (int64_t j = first; j <= p; ++j) o += pr[size_t(j - first)] * vdec[size_t(j * width + kvh * d + e)];
                        out[h * d + e] = float(o / sum);
                    }
                }
            };
            // Decode: one token at position 999, the grid sized for it (4 splits) and, as a captured
            // decode step launches it, for a 4096-cell context (16 splits, 12 of them past its keys).
            const int64_t wide = 4096;
            DeviceBuffer dout(n_head * d * sizeof(float)), scratch(attention_scratch_floats(n_head, 1, wide, d) * sizeof(float));
            std::vector<float> ref(static_cast<size_t>(n_head * d));
            reference(q.data(), n_kv - 1, 0, 0.0f, ref.data());
            double dec = 0;
            for (const int64_t max_pos : {n_kv - 1, wide - 1}) {
                attention(format, dq.as<float>(), dk.as<uint8_t>(), dv.as<uint8_t>(), dout.as<float>(), n_head, n_kv_head,
                          d, 1, pos + (n_kv - 1), max_pos, 0, scale, 0.0f, scratch.as<float>(), nullptr);
                dec = std::max(dec, rel_max(from_device<float>(dout, ref.size()), ref));
            }
            r.entries.push_back({f16 ? std::string("attention_decode") : str("attention_decode_", fname), dec, 1e-5, 0,
                                 str("8 heads (GQA 4:1) x 128, 1000 cached ", fname,
                                     " positions, grid of 4 and of 16 splits, vs double")});
            // Prefill: 40 query tokens at positions 960..999 under a 300-key window and softcap 30
            // (each token's keys span two or three splits), then 40 at positions 0..39 with no window.
            DeviceBuffer dqs = to_device(qs), douts(n_tok * n_head * d * sizeof(float)),
                         pscratch(attention_scratch_floats(n_head, n_tok, n_kv, d) * sizeof(float));
            std::vector<float> refs(qs.size());
            double worst = 0;
            for (const auto& [pos0, window, softcap] : {std::tuple<int64_t, int64_t, float>{960, 300, 30.0f}, {0, 0, 0.0f}}) {
                attention(format, dqs.as<float>(), dk.as<uint8_t>(), dv.as<uint8_t>(), douts.as<float>(), n_head, n_kv_head,
                          d, n_tok, pos + pos0, pos0 + n_tok - 1, window, scale, softcap, pscratch.as<float>(), nullptr);
                for (int64_t t = 0; t < n_tok; ++t)
                    reference(qs.data() + t * n_head * d, pos0 + t, window, softcap, refs.data() + t * n_head * d);
                worst = std::max(worst, rel_max(from_device<float>(douts, refs.size()), refs));
            }
            r.entries.push_back({f16 ? std::string("attention_prefill") : str("attention_prefill_", fname), worst, 1e-5, 0,
                                 str("40 tokens x 8 heads x 128 at positions 960.. (window 300, softcap 30) and 0.. "
                                     "(causal) over ", fname, " rows, vs double")});
        }
    }
    {   // Context shift: 60 positions move from 40 to 10 (two launches of 30), keys rotated by -30
        // (partial rotary, NeoX and normal pairs), vs decode + cpu::rope + encode on the host, bit for bit
        const int64_t n_kv_head = 2, d = 128, n_rot = 64, n_pos = 100, src0 = 40, dst0 = 10, count = 60;
        std::vector<double> inv_freq(size_t(n_rot / 2));
        for (int64_t j = 0; j < n_rot / 2; ++j) inv_freq[size_t(j)] = std::pow(10000.0, -2.0 * double(j) / double(n_rot));
        std::vector<float> cs(static_cast<size_t>(n_rot));
        cpu::rope_cos_sin(double(dst0 - src0), inv_freq.data(), n_rot / 2, cs.data());
        DeviceBuffer dcs = to_device(cs);
        for (const KvFormat format : {KvFormat::F16, KvFormat::Q8_0})
            for (const bool neox : {false, true}) {
                const bool f16 = format == KvFormat::F16;
                const int64_t rb = kv_row_bytes(format, d), pos_bytes = n_kv_head * rb;
                const std::vector<float> x = random_floats(size_t(n_pos * n_kv_head * d), rng, -3, 3);
                std::vector<uint8_t> image(size_t(n_pos * pos_bytes));
                if (f16) cpu::f32_to_f16_row(x.data(), reinterpret_cast<uint16_t*>(image.data()), int64_t(x.size()));
                else quant_type(GGMLType::Q8_0).from_float(x.data(), image.data(), int64_t(x.size()), nullptr);
                std::vector<uint8_t> want = image;
                std::vector<float> rowf(static_cast<size_t>(d));
                for (int64_t i = 0; i < count; ++i)
                    for (int64_t g = 0; g < n_kv_head; ++g) {
                        const uint8_t* src = image.data() + (src0 + i) * pos_bytes + g * rb;
                        uint8_t* dst = want.data() + (dst0 + i) * pos_bytes + g * rb;
                        for (int64_t e = 0; e < d; ++e) rowf[size_t(e)] = f16 ? KvF16::at(src, e) : KvQ8::at(src, e);
                        cpu::rope(rowf.data(), 1, d, n_rot, neox, cs.data());
                        for (int64_t e = 0; e < d; e += f16 ? 1 : 32) {
                            if (f16) {
                                const uint16_t h = fp32_to_fp16(rowf[size_t(e)]);
                                std::memcpy(dst + 2 * e, &h, 2);
                            } else {
                                KvQ8::quantize_block(rowf.data() + e, dst + e / 32 * KvQ8::kBlock);
                            }
                        }
                    }
                DeviceBuffer dk = to_device(image), dv = to_device(image);
                kv_move(format, dk.as<uint8_t>(), n_kv_head, d, src0, dst0, count, dcs.as<float>(), n_rot, neox, nullptr);
                kv_move(format, dv.as<uint8_t>(), n_kv_head, d, src0, dst0, count, nullptr, 0, neox, nullptr);
                const std::vector<uint8_t> gk = from_device<uint8_t>(dk, image.size()), gv = from_device<uint8_t>(dv, image.size());
                std::vector<uint8_t> want_v = image;   // values: bytes moved down, nothing else
                std::memmove(want_v.data() + dst0 * pos_bytes, image.data() + src0 * pos_bytes, size_t(count * pos_bytes));
                int64_t bad = 0;
                for (size_t i = 0; i < image.size(); ++i) bad += (gk[i] != want[i]) + (gv[i] != want_v[i]);
                r.entries.push_back({str("kv_shift_", f16 ? "f16" : "q8_0", neox ? "_neox" : ""), double(bad), 0, 0,
                                     str("60 of 100 positions x 2 heads x 128 moved by -30 (n_rot 64), keys rotated, vs "
                                         "decode + cpu::rope + encode on the host, bit for bit")});
            }
    }
}

}  // namespace

double device_copy_gbs(size_t bytes) {
    LOWBIT_CHECK(bytes > 0, ValueError, "device_copy_gbs: bytes must be positive");
    DeviceBuffer src(bytes, 0), dst(bytes, 0);
    LOWBIT_CUDA_CHECK(cudaMemset(src.as<uint8_t>(), 1, bytes));
    Timer t;
    const double ms = t.median_ms([&] {
        LOWBIT_CUDA_CHECK(cudaMemcpyAsync(dst.as<uint8_t>(), src.as<uint8_t>(), bytes, cudaMemcpyDeviceToDevice));
    }, 2, 10);
    return 2.0 * double(bytes) / (ms * 1e6);
}

void device_alloc_probe(size_t bytes) {
    DeviceBuffer b(bytes, 0);
    LOWBIT_CUDA_CHECK(cudaMemset(b.as<uint8_t>(), 0, bytes));
    LOWBIT_CUDA_CHECK(cudaDeviceSynchronize());
}

SelfTestReport run_selftest(uint64_t seed, bool bandwidth) {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        cudaGetLastError();
        throw CudaError(str("no CUDA device (", err != cudaSuccess ? cudaGetErrorString(err) : "none found", ")"));
    }
    LOWBIT_CUDA_CHECK(cudaSetDevice(0));
    cudaDeviceProp prop{};
    LOWBIT_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    SelfTestReport r;
    r.device = str(prop.name, " (cc ", prop.major, ".", prop.minor, ", ", prop.multiProcessorCount, " SMs, ",
                   prop.totalGlobalMem >> 20, " MiB)");
    Rng rng(seed);
    cpu::ThreadPool pool;
    DeviceBuffer bench;
    if (bandwidth) {
        r.entries.push_back({"copy", 0, 0, device_copy_gbs(kBenchBytes), "1 GiB device-to-device copy, read + write"});
        bench.alloc(kBenchBytes + (size_t(64) << 20));
    }
    // A failing check becomes an entry with an infinite error and the exception's message, so one
    // run names every failure (after a sticky error such as an illegal address, the rest fail too).
    const bool verbose = std::getenv("LOWBIT_SELFTEST_VERBOSE") != nullptr;
    size_t reported = r.entries.size();
    auto guarded = [&](const std::string& name, auto&& fn) {
        try {
            fn();
        } catch (const std::exception& e) {
            r.entries.push_back({str("error/", name), INFINITY, 0, 0, e.what()});
        }
        for (; verbose && reported < r.entries.size(); ++reported) {
            const SelfTestEntry& e = r.entries[reported];
            std::fprintf(stderr, "selftest %-20s err %.3g tol %.1g  %.1f GB/s  %s\n", e.name.c_str(), e.max_err, e.tol,
                         e.gbs, e.detail.c_str());
        }
    };
    for (const QuantType& qt : quant_types()) {
        if (!has_format(qt.type)) continue;
        guarded(str("matvec/", qt.name), [&] { check_matvec(qt.type, rng, pool, bandwidth ? &bench : nullptr, r); });
        guarded(str("matmul/", qt.name), [&] { check_matmul(qt.type, rng, r); });
    }
    guarded("ops", [&] { check_ops(rng, r); });
    guarded("sync", [&] { LOWBIT_CUDA_CHECK(cudaDeviceSynchronize()); });
    return r;
}

}  // namespace lowbit::cuda
