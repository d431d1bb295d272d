// bind_cpu.cpp: CPU kernels, dispatch and threaded matmul (lowbit.cpu wraps these).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <string>

#include "bindings/bind.h"
#include "common.h"
#include "cpu/dispatch.h"
#include "cpu/kernels.h"
#include "cpu/matmul.h"
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
        if (!cpu::kernel_for(cpu::scalar::kKernels, t.type)) continue;
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
    return d;
}

// y (n, rows) = x (n, cols) . W^T for raw weight bytes of shape (rows, cols).
// packed: weights are cpu_pack_rows output (kernels.h, PackedLayout); small_batches: matmul.h.
Floats matmul(const Bytes& weights, const std::string& type_name, int64_t rows, int64_t cols, const Floats& x,
              cpu::ThreadPool& pool, const std::string& act_precision, bool packed, bool small_batches) {
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
        if (packed) cpu::matmul_packed(w, type, rows, cols, xp, n, yp, pool, precision);
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

// The per-op totals of cpu/profile.h: {"enabled", "passes", "rows", "ops": {name: {"seconds",
// "calls", "idle_seconds", "parallel_fors"}}}; reset zeroes them after reading.
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
          py::arg("small_batches") = false);
    m.def("cpu_pack_rows", &pack_rows, py::arg("weights"), py::arg("type_name"), py::arg("rows"), py::arg("cols"),
          "GGML rows -> packed strips of 16 interleaved rows (the layout weights are repacked into at load).");
    m.def("cpu_unpack_strip", &unpack_strip, py::arg("packed"), py::arg("type_name"), py::arg("rows"), py::arg("cols"),
          py::arg("strip"));
    m.def("cpu_vec_dot", &vec_dot, py::arg("type_name"), py::arg("weights"), py::arg("act"));
    m.def("cpu_quantize_act", &quantize_act, py::arg("fmt"), py::arg("x"));
    m.def("cpu_act_format", [](const std::string& type_name) {
        const cpu::ActFormat f = cpu::act_format(cpu_type(type_name));
        return std::string(f == cpu::ActFormat::Q8_0 ? "Q8_0" : f == cpu::ActFormat::Q8_K ? "Q8_K" : "F32");
    }, py::arg("type_name"));
    m.def("cpu_read_bandwidth", [](cpu::ThreadPool& pool, int64_t bytes, int iters) {
        py::gil_scoped_release nogil;
        return cpu::read_bandwidth_gbs(pool, bytes, iters);
    }, py::arg("pool"), py::arg("bytes"), py::arg("iters"));
    m.def("cpu_set_op_profile", [](bool on) { cpu::prof::set_enabled(on); }, py::arg("on"),
          "Turns the per-op forward profile on or off (also on with LOWBIT_PROFILE=1).");
    m.def("cpu_op_profile", &op_profile, py::arg("reset") = false,
          "Per-op totals of every forward pass since the last reset (cpu/profile.h).");
}

}  // namespace lowbit
