// bind_cpu.cpp: CPU kernels, dispatch and threaded matmul (lowbit.cpu wraps these).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <string>

#include "bindings/bind.h"
#include "common.h"
#include "cpu/attention.h"
#include "cpu/dispatch.h"
#include "cpu/kernels.h"
#include "cpu/matmul.h"
#include "cpu/ops.h"
#include "cpu/profile.h"

namespace py = pybind11;

namespace lowbit {
namespace {

using Bytes = py::array_t<uint8_t, py::array::c_style>;
using Floats = py::array_t<float, py::array::c_style>;

// GGML type by name ("Q4_K"), restricted to the types with a CPU kernel.
GGMLType cpu_type(const std::string& name) {
    std::string valid;
    for (const auto& t : kGGMLTypeSizes) {
        if (!cpu::kernel_for(cpu::scalar::kernel_set(), t.type)) continue;
        if (name == t.name) return t.type;
        valid += valid.empty() ? t.name : str(", ", t.name);
    }
    throw ValueError(str("no CPU kernel for type '", name, "'; valid types: ", valid));
}

const GGMLTypeSize& size_of(GGMLType t) { return *ggml_type_size(static_cast<uint32_t>(t)); }

py::dict features() {
    const cpu::CpuFeatures& f = cpu::cpu_features();
    py::dict d;
    d["avx2"] = f.avx2; d["fma"] = f.fma; d["f16c"] = f.f16c; d["bmi2"] = f.bmi2;
    d["avx512f"] = f.avx512f; d["avx512bw"] = f.avx512bw; d["avx512vl"] = f.avx512vl;
    d["avx512dq"] = f.avx512dq; d["avx512vnni"] = f.avx512vnni; d["avx512bf16"] = f.avx512bf16;
    d["avxvnni"] = f.avxvnni; d["os_avx"] = f.os_avx; d["os_avx512"] = f.os_avx512;
    d["supported"] = cpu::supported_levels();
    d["kernels"] = cpu::kernels().name;
    d["physical_cores"] = cpu::physical_core_count();
    d["weight_hint"] = cpu::weight_hint_name();
    return d;
}

// y (n, rows) = x (n, cols) . W^T for raw weight bytes of shape (rows, cols).
// packed: weights are cpu_pack_rows output (kernels.h, PackedLayout); small_batches: matmul.h.
Floats matmul(const Bytes& weights, const std::string& type_name, int64_t rows, int64_t cols, const Floats& x,
              cpu::ThreadPool& pool, const std::string& act_precision, bool packed, bool small_batches,
              bool made_rows) {
    const GGMLType type = cpu_type(type_name);
    const cpu::ActPrecision precision = cpu::parse_act_precision(act_precision);
    cpu::check_matmul_shape(type, rows, cols);
    LOWBIT_CHECK(!packed || cpu::PackedLayout::has(type), ValueError, type_name, " has no packed layout");
    const int64_t want = packed ? cpu::packed_bytes(type, rows, cols)
                                : checked_mul(rows, cpu::weight_row_bytes(type, cols), "matmul weight bytes (rows x row bytes)");
    LOWBIT_CHECK(weights.size() == want, ValueError, "weights have ", weights.size(), " bytes; ", type_name,
                 packed ? " packed" : "", " shape (", rows, ", ", cols, ") needs ", want);
    LOWBIT_CHECK(x.ndim() == 2 && x.shape(1) == cols, ValueError, "x must have shape (n, ", cols, "), got width ",
                 x.ndim() >= 1 ? x.shape(x.ndim() - 1) : 0, " with ", x.ndim(), " dims");
    const int64_t n = x.shape(0);
    checked_mul(checked_mul(n, rows, "matmul output (n x rows)"), int64_t(sizeof(float)), "matmul output bytes");
    Floats y({n, rows});
    const uint8_t* w = weights.data();
    const float* xp = x.data();
    float* yp = y.mutable_data();
    {
        py::gil_scoped_release nogil;
        // made_rows: x's rows handed out one by one through a cpu::RowMaker (as the forward pass
        // makes the FFN's gated rows), for the tests that hold it to the plain call
        auto copy_row = [&](int64_t i, float* row) { std::memcpy(row, xp + i * cols, size_t(cols) * sizeof(float)); };
        using Copy = decltype(copy_row);
        const cpu::RowMaker maker{[](const void* ctx, int64_t i, float* row) { (*static_cast<const Copy*>(ctx))(i, row); },
                                  &copy_row};
        if (made_rows) cpu::matmul(packed ? nullptr : w, type, rows, cols, maker, n, yp, pool, precision, small_batches,
                                   packed ? w : nullptr);
        else if (packed) cpu::matmul_packed(w, type, rows, cols, xp, n, yp, pool, precision);
        else cpu::matmul(w, type, rows, cols, xp, n, yp, pool, precision, small_batches);
    }
    return y;
}

// GGML rows (rows x cols of type_name, as bytes) -> packed strips (kernels.h, PackedLayout).
Bytes pack_rows(const Bytes& weights, const std::string& type_name, int64_t rows, int64_t cols) {
    const GGMLType type = cpu_type(type_name);
    cpu::check_matmul_shape(type, rows, cols);
    LOWBIT_CHECK(cpu::PackedLayout::has(type), ValueError, type_name, " has no packed layout");
    const int64_t wrow = cpu::weight_row_bytes(type, cols);
    LOWBIT_CHECK(weights.size() == checked_mul(rows, wrow, "weight bytes"), ValueError, "weights have ",
                 weights.size(), " bytes; ", type_name, " shape (", rows, ", ", cols, ") needs ", rows * wrow);
    Bytes out(cpu::packed_bytes(type, rows, cols));
    cpu::pack_rows(type, rows, cols, weights.data(), size_t(wrow), out.mutable_data());
    return out;
}

// The GGML rows of `parts` (each rows x cols of type_name, as bytes) stacked, packed as load packs
// q | k | v: pack_strips over the runs without a copy, `chunk` strips a call (0: all at once).
Bytes pack_runs(const std::vector<Bytes>& parts, const std::string& type_name, int64_t cols, int64_t chunk) {
    const GGMLType type = cpu_type(type_name);
    LOWBIT_CHECK(cpu::PackedLayout::has(type), ValueError, type_name, " has no packed layout");
    LOWBIT_CHECK(!parts.empty() && chunk >= 0, ValueError, "pack_runs needs parts and chunk >= 0");
    const int64_t wrow = cpu::weight_row_bytes(type, cols);
    std::vector<cpu::RowRun> runs;
    int64_t rows = 0;
    for (const Bytes& p : parts) {
        LOWBIT_CHECK(p.size() > 0 && p.size() % wrow == 0, ValueError, "a part of ", p.size(), " bytes is not whole ",
                     type_name, " rows of ", cols, " columns");
        runs.push_back({p.data(), p.size() / wrow});
        rows += p.size() / wrow;
    }
    cpu::check_matmul_shape(type, rows, cols);
    Bytes out(cpu::packed_bytes(type, rows, cols));
    const int64_t n_strips = (rows + cpu::kStripRows - 1) / cpu::kStripRows, step = chunk ? chunk : n_strips;
    for (int64_t s = 0; s < n_strips; s += step)
        cpu::pack_strips(type, cols, runs.data(), int(runs.size()), size_t(wrow), s, std::min(n_strips, s + step),
                         out.mutable_data());
    return out;
}

// Strip s of packed weights back to GGML rows (its rows that exist), as bytes.
Bytes unpack_strip(const Bytes& packed, const std::string& type_name, int64_t rows, int64_t cols, int64_t s) {
    const GGMLType type = cpu_type(type_name);
    cpu::check_matmul_shape(type, rows, cols);
    LOWBIT_CHECK(cpu::PackedLayout::has(type) && packed.size() == cpu::packed_bytes(type, rows, cols), ValueError,
                 "packed ", type_name, " (", rows, ", ", cols, ") needs ", cpu::packed_bytes(type, rows, cols), " bytes");
    LOWBIT_CHECK(s >= 0 && s * cpu::kStripRows < rows, ValueError, "strip ", s, " out of range");
    const int64_t wrow = cpu::weight_row_bytes(type, cols);
    const int nrows = int(std::min<int64_t>(cpu::kStripRows, rows - s * cpu::kStripRows));
    Bytes out(nrows * wrow);
    cpu::unpack_strip(type, cols, packed.data(), s, nrows, out.mutable_data(), size_t(wrow));
    return out;
}

// One dot of a weight row with an activation row already in the type's activation format
// (quantize_act bytes for quantized types, float32 bytes for F32/F16/BF16).
float vec_dot(const std::string& type_name, const Bytes& weights, const Bytes& act) {
    const GGMLType type = cpu_type(type_name);
    const GGMLTypeSize& ts = size_of(type);
    LOWBIT_CHECK(weights.size() > 0 && weights.size() % ts.block_bytes == 0, ValueError, "weights have ",
                 weights.size(), " bytes, not a positive multiple of the ", ts.name, " block (", ts.block_bytes, ")");
    const int64_t n = weights.size() / ts.block_bytes * ts.block_elems;
    LOWBIT_CHECK(n <= (int64_t(1) << 30), ValueError, "row of ", n, " elements exceeds 2^30");
    const int64_t want = int64_t(cpu::act_row_bytes(cpu::act_format(type), n));
    LOWBIT_CHECK(act.size() == want, ValueError, "activation has ", act.size(), " bytes; a ", ts.name, " row of ", n,
                 " elements needs ", want);
    const cpu::VecDotFn dot = cpu::kernel_for(cpu::kernels(), type);
    py::gil_scoped_release nogil;
    return dot(int(n), weights.data(), act.data());
}

// x (n,) f32 -> activation blocks ("Q8_0" or "Q8_K") as bytes, with the current kernel set.
Bytes quantize_act(const std::string& fmt, const Floats& x) {
    LOWBIT_CHECK(fmt == "Q8_0" || fmt == "Q8_K", ValueError, "activation format '", fmt, "' must be Q8_0 or Q8_K");
    const int64_t qk = fmt == "Q8_0" ? QK8_0 : QK_K;
    const int64_t n = x.size();
    LOWBIT_CHECK(x.ndim() == 1 && n > 0 && n % qk == 0 && n <= (int64_t(1) << 30), ValueError, "x of ", n,
                 " elements (", x.ndim(), " dims) must be 1-D with a positive multiple of ", qk, " elements");
    const cpu::ActFormat af = fmt == "Q8_0" ? cpu::ActFormat::Q8_0 : cpu::ActFormat::Q8_K;
    Bytes out(int64_t(cpu::act_row_bytes(af, n)));
    const cpu::KernelSet& ks = cpu::kernels();
    const float* xp = x.data();
    uint8_t* op = out.mutable_data();
    py::gil_scoped_release nogil;
    if (af == cpu::ActFormat::Q8_0) ks.quantize_q8_0(xp, reinterpret_cast<block_q8_0*>(op), int(n));
    else ks.quantize_q8_K(xp, reinterpret_cast<block_q8_K*>(op), int(n));
    return out;
}

// Rows of a K or V array for attend_head: (n_cells, d) float16 (read in place) or float32 (read
// through AttnCache::fetch, as a q8_0 cache's dequantized rows are).
struct AttnRowsArg {
    py::array a;
    bool f16 = false;
    static void fetch(const void* ctx, bool value, int64_t cell, int64_t n, float* rows) {
        const auto* kv = static_cast<const AttnRowsArg*>(ctx);
        const py::array& a = kv[value ? 1 : 0].a;
        const int64_t d = a.shape(1);
        std::memcpy(rows, static_cast<const float*>(a.data()) + cell * d, size_t(n * d) * sizeof(float));
    }
};

// out (n_tok, n_heads, d) = cpu::attend_head of q (n_tok, n_heads, d) over K / V rows (n_cells, d):
// token t at position pos0 + t, position p in cell p % n_cells (attention.h), with the named
// kernel set; repeat > 1 runs it again (benchmarks).
Floats attend_head(const Floats& q, const py::array& k, const py::array& v, int64_t pos0, int64_t window, float scale,
                   float softcap, const std::optional<Floats>& sinks, const std::string& kernels, int repeat) {
    LOWBIT_CHECK(q.ndim() == 3 && k.ndim() == 2 && v.ndim() == 2 && k.shape(0) == v.shape(0) &&
                     k.shape(1) == q.shape(2) && v.shape(1) == q.shape(2), ValueError,
                 "attend_head: q (n_tok, n_heads, d) and k, v (n_cells, d) do not match");
    const int64_t n_tok = q.shape(0), n_heads = q.shape(1), d = q.shape(2), n_cells = k.shape(0);
    AttnRowsArg rows[2];
    for (int i = 0; i < 2; ++i) {
        const py::array& a = i ? v : k;
        const bool f16 = a.dtype().kind() == 'f' && a.itemsize() == 2, f32 = a.dtype().is(py::dtype::of<float>());
        LOWBIT_CHECK((f16 || f32) && (a.flags() & py::array::c_style), ValueError,
                     "attend_head: k and v must be C-contiguous float16 or float32");
        rows[i] = AttnRowsArg{a, f16};
    }
    LOWBIT_CHECK(rows[0].f16 == rows[1].f16, ValueError, "attend_head: k and v of different dtypes");
    const int64_t lo = window > 0 ? std::max<int64_t>(0, pos0 - window + 1) : 0;
    LOWBIT_CHECK(pos0 >= 0 && window >= 0 && n_tok >= 1 && pos0 + n_tok - lo <= n_cells, ValueError,
                 "attend_head: keys ", lo, "..", pos0 + n_tok - 1, " do not fit ", n_cells, " cells");
    LOWBIT_CHECK(!sinks || (sinks->ndim() == 1 && sinks->shape(0) == n_heads), ValueError,
                 "attend_head: sinks must be (n_heads,)");
    const cpu::AttnKernels& ks = cpu::attn_kernels(kernels);
    Floats out({n_tok, n_heads, d});
    cpu::AttnQueries a;
    a.q = q.data();
    a.out = out.mutable_data();
    a.q_head_stride = a.out_head_stride = d;
    a.q_tok_stride = a.out_tok_stride = n_heads * d;
    a.n_heads = n_heads;
    a.n_tok = n_tok;
    a.d = d;
    a.pos0 = pos0;
    a.window = window;
    a.scale = scale;
    a.softcap = softcap;
    a.sinks = sinks ? sinks->data() : nullptr;
    cpu::AttnCache kv;
    kv.n_cells = n_cells;
    if (rows[0].f16) {
        kv.k = static_cast<const uint16_t*>(k.data());
        kv.v = static_cast<const uint16_t*>(v.data());
        kv.stride = d;
    } else {
        kv.fetch = AttnRowsArg::fetch;
        kv.ctx = rows;
    }
    std::vector<float> scratch(size_t(cpu::attn_scratch_floats(d)));
    py::gil_scoped_release nogil;
    for (int i = 0; i < std::max(1, repeat); ++i) cpu::attend_head(a, kv, scratch.data(), ks);
    return out;
}

// The per-op totals of cpu/profile.h: {"enabled", "passes", "rows", "ops": {name: {"seconds",
// "calls", "idle_seconds", "parallel_fors"}}}; reset zeroes them after reading.
// x (n, cols) f32 -> the strip GEMM's activation groups for `type` at `precision` (matmul.h), as bytes.
Bytes strip_acts(const std::string& type_name, const Floats& x, const std::string& precision, cpu::ThreadPool& pool) {
    const GGMLType type = cpu_type(type_name);
    LOWBIT_CHECK(x.ndim() == 2, ValueError, "x must be 2-D (n, cols), got ", x.ndim(), " dims");
    const cpu::ActPrecision p = cpu::parse_act_precision(precision);
    std::vector<uint8_t> bytes;
    {
        py::gil_scoped_release nogil;
        bytes = cpu::strip_activations(type, x.shape(1), x.data(), x.shape(0), p, pool);
    }
    Bytes out(int64_t(bytes.size()));
    std::memcpy(out.mutable_data(), bytes.data(), bytes.size());
    return out;
}

// act(gate) * up ("silu" / "gelu") and rmsnorm by one implementation of ops.h's loops ("generic",
// "avx2", "avx512"), for the tests that hold them to each other.
Floats gated_act(const std::string& impl, const std::string& act, const Floats& gate, const Floats& up) {
    LOWBIT_CHECK(gate.ndim() == 1 && up.ndim() == 1 && gate.size() == up.size(), ValueError,
                 "gate and up must be 1-D of one length");
    Floats out(gate.size());
    cpu::gated_act_with(impl.c_str(), act.c_str(), gate.data(), up.data(), out.mutable_data(), gate.size());
    return out;
}

Floats rmsnorm(const std::string& impl, const Floats& x, const std::optional<Floats>& w, float eps) {
    LOWBIT_CHECK(x.ndim() == 1 && x.size() > 0 && (!w || (w->ndim() == 1 && w->size() == x.size())), ValueError,
                 "x must be 1-D and non-empty, w (if given) of its length");
    Floats out(x.size());
    cpu::rmsnorm_with(impl.c_str(), x.data(), w ? w->data() : nullptr, out.mutable_data(), x.size(), eps);
    return out;
}

py::dict op_profile(bool reset) {
    const cpu::prof::Snapshot snap = cpu::prof::snapshot();
    if (reset) cpu::prof::reset();
    py::dict ops;
    for (int i = 0; i < cpu::prof::kOps; ++i) {
        const cpu::prof::OpTotals& t = snap.ops[i];
        py::dict d;
        d["seconds"] = double(t.ns) * 1e-9;
        d["calls"] = t.calls;
        d["idle_seconds"] = double(t.idle_ns) * 1e-9;
        d["parallel_fors"] = t.parallel_fors;
        ops[cpu::prof::op_name(cpu::prof::Op(i))] = d;
    }
    py::dict out;
    out["enabled"] = cpu::prof::enabled();
    out["passes"] = snap.passes;
    out["rows"] = snap.rows;
    out["ops"] = ops;
    return out;
}

}  // namespace

void bind_cpu(py::module_& m) {
    py::class_<cpu::ThreadPool>(m, "CpuThreadPool", "Persistent CPU worker threads (n_threads <= 0: physical cores).")
        .def(py::init<int>(), py::arg("n_threads") = 0)
        .def_property_readonly("size", &cpu::ThreadPool::size);
    m.def("cpu_features", &features, "Detected CPU flags, supported kernel levels and the chosen one.");
    m.def("cpu_set_kernels", [](const std::string& name) { cpu::set_kernels(name); }, py::arg("name"));
    m.def("cpu_get_kernels", []() { return std::string(cpu::kernels().name); });
    m.def("cpu_matmul", &matmul, py::arg("weights"), py::arg("type_name"), py::arg("rows"), py::arg("cols"),
          py::arg("x"), py::arg("pool"), py::arg("act_precision") = "q8", py::arg("packed") = false,
          py::arg("small_batches") = false, py::arg("made_rows") = false);
    m.def("cpu_pack_rows", &pack_rows, py::arg("weights"), py::arg("type_name"), py::arg("rows"), py::arg("cols"),
          "GGML rows -> packed strips of 16 interleaved rows (the layout weights are repacked into at load).");
    m.def("cpu_pack_runs", &pack_runs, py::arg("parts"), py::arg("type_name"), py::arg("cols"), py::arg("chunk") = 0,
          "Several GGML row blocks stacked and packed without a copy, `chunk` strips a call (as load packs q | k | v).");
    m.def("cpu_weight_hint", &cpu::weight_hint_name, "The hint of the matmuls' weight requests: 'nta' or 't0'.");
    m.def("cpu_set_weight_hint", &cpu::set_weight_hint, py::arg("name"),
          "Switch the weight requests' hint ('nta' or 't0') for the whole process (benchmarks); bits are unchanged.");
    m.def("cpu_packs", [](const std::string& type_name) { return cpu::packs(cpu::kernels(), cpu_type(type_name)); },
          py::arg("type_name"), "Whether the kernel set in use reads packed rows of the type in place (load repacks them).");
    m.def("cpu_unpack_strip", &unpack_strip, py::arg("packed"), py::arg("type_name"), py::arg("rows"), py::arg("cols"),
          py::arg("strip"));
    m.def("cpu_vec_dot", &vec_dot, py::arg("type_name"), py::arg("weights"), py::arg("act"));
    m.def("cpu_quantize_act", &quantize_act, py::arg("fmt"), py::arg("x"));
    m.def("cpu_gated_act", &gated_act, py::arg("impl"), py::arg("act"), py::arg("gate"), py::arg("up"));
    m.def("cpu_rmsnorm", &rmsnorm, py::arg("impl"), py::arg("x"), py::arg("w"), py::arg("eps"));
    m.def("cpu_strip_acts", &strip_acts, py::arg("type_name"), py::arg("x"), py::arg("precision"), py::arg("pool"));
    m.def("cpu_act_format", [](const std::string& type_name) {
        const cpu::ActFormat f = cpu::act_format(cpu_type(type_name));
        return std::string(f == cpu::ActFormat::Q8_0 ? "Q8_0" : f == cpu::ActFormat::Q8_K ? "Q8_K" : "F32");
    }, py::arg("type_name"));
    m.def("cpu_read_bandwidth", [](cpu::ThreadPool& pool, int64_t bytes, int iters) {
        py::gil_scoped_release nogil;
        return cpu::read_bandwidth_gbs(pool, bytes, iters);
    }, py::arg("pool"), py::arg("bytes"), py::arg("iters"));
    m.def("cpu_attend_head", &attend_head, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("pos0"),
          py::arg("window") = 0, py::arg("scale") = 1.0f, py::arg("softcap") = 0.0f, py::arg("sinks") = py::none(),
          py::arg("kernels") = "scalar", py::arg("repeat") = 1,
          "Attention of one KV head's query rows over its cached rows with a named kernel set (cpu/attention.h).");
    m.def("cpu_set_op_profile", [](bool on) { cpu::prof::set_enabled(on); }, py::arg("on"),
          "Turns the per-op forward profile on or off (also on with LOWBIT_PROFILE=1).");
    m.def("cpu_op_profile", &op_profile, py::arg("reset") = false,
          "Per-op totals of every forward pass since the last reset (cpu/profile.h).");
}

}  // namespace lowbit
