// bind_runtime.cpp: build and device facts.
#include <pybind11/stl.h>

#include "bindings/bind.h"
#include "runtime/device.h"

namespace py = pybind11;

namespace lowbit {

void bind_runtime(py::module_& m) {
    m.def("cuda_status", []() {
        CudaStatus s;
        {
            py::gil_scoped_release nogil;
            s = cuda_status();
        }
        py::list devices;
        for (const auto& d : s.devices) {
            py::dict dd;
            dd["index"] = d.index;
            dd["name"] = d.name;
            dd["compute_capability"] = py::make_tuple(d.cc_major, d.cc_minor);
            dd["sm_count"] = d.sm_count;
            dd["total_bytes"] = d.total_bytes;
            dd["free_bytes"] = d.free_bytes;
            devices.append(dd);
        }
        py::dict out;
        out["compiled"] = s.compiled;
        out["device_count"] = s.device_count;
        out["message"] = s.message;
        out["devices"] = devices;
        return out;
    }, "CUDA build flag, device count and per-device facts; never raises for a missing driver.");
#ifdef LOWBIT_WITH_CUDA
    m.attr("BUILT_WITH_CUDA") = true;
#else
    m.attr("BUILT_WITH_CUDA") = false;
#endif
}

}  // namespace lowbit
