// dispatch.h: CPU feature detection and the process-wide choice of kernel set.
#pragma once
#include <string>

#include "cpu/kernels.h"

namespace lowbit::cpu {

// What the CPU and OS support (cpuid + xgetbv: the OS must save the AVX / AVX-512 state).
struct CpuFeatures {
    bool avx2 = false, fma = false, f16c = false, bmi2 = false;
    bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
    bool avx512vnni = false, avx512bf16 = false, avxvnni = false;
    bool os_avx = false, os_avx512 = false;  // XCR0 has the YMM / ZMM state enabled
    bool has_avx2_level() const;    // what dot_avx2.cpp needs
    bool has_avx512_level() const;  // what dot_avx512.cpp needs
};

const CpuFeatures& cpu_features();

// Kernel-set names the CPU can run, best last ("scalar", "avx2", "avx512").
std::string supported_levels();

// The kernel set in use. On first use it is the best the CPU supports, or the one named by env
// LOWBIT_CPU=scalar|avx2|avx512; an unknown or unsupported name throws ValueError (every call
// until the variable is fixed or set_kernels() chooses one).
const KernelSet& kernels();

// Switch the kernel set for the whole process (tests, benchmarks); ValueError as above.
void set_kernels(const std::string& name);

// The hint of the weight requests (weight_stream.h): "nta" or "t0". By CPU vendor, or env
// LOWBIT_WEIGHT_HINT=nta|t0 read when the kernel set is first chosen (another value: ValueError,
// as LOWBIT_CPU); set_weight_hint switches it for the whole process (benchmarks).
std::string weight_hint_name();
void set_weight_hint(const std::string& name);

}  // namespace lowbit::cpu
