// dispatch.cuh: a run-time GGMLType to its Fmt<T> (cuda/quant_hd.h), for the launchers.
#pragma once
#include "cuda/cuda_common.cuh"

namespace lowbit::cuda {

// Calls fn(Fmt<T>{}) for the format `type`; ValueError for a type without a device path.
template <class Fn>
void dispatch_format(GGMLType type, const char* what, Fn&& fn) {
    switch (type) {
#define LOWBIT_DISPATCH_CASE(T) case GGMLType::T: fn(Fmt<GGMLType::T>{}); return;
        LOWBIT_CUDA_FORMATS(LOWBIT_DISPATCH_CASE)
#undef LOWBIT_DISPATCH_CASE
        default: break;
    }
    throw ValueError(str(what, ": no CUDA kernel for GGML type ", uint32_t(type)));
}

}  // namespace lowbit::cuda
