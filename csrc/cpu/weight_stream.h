// weight_stream.h: the software requests of the weight bytes a matmul streams from memory (the
// packed GEMM's and gemv's lines ahead, a strip GEMM's next strip), one helper for every kernel.
//
// The hint is one process-wide choice (g_weight_hint, dispatch.cpp: by CPU vendor, or env
// LOWBIT_WEIGHT_HINT=nta|t0), because the two vendors measured want opposite ones:
//   AMD: non-temporal (prefetchnta). A decode step reads each weight byte once, while its KV-cache
//     rows, activations and scratch are read again within the step or in the next one. Weight
//     lines requested into L1 / L2 (T0 / T1) were later evicted into the L3 (a victim cache on
//     Zen) and pushed those reused lines out, so attention read its cached K / V rows from memory
//     again every step. Zen 5 (2 cores, same process pairs, decode steps after a 32-token prompt):
//     SmolLM2 8 sessions, q8 activations: 4.14 -> 3.85 ms a step (best of 15); gemma3 one token:
//     4.54 -> 4.24 ms.
//   Intel and the rest: T0 (prefetcht0). On an Intel Xeon with AVX-512 and AMX (2 vCPUs, 2 MB L2
//     a core), prefetchnta made one-token decode 4-6x slower than T0 (SmolLM2 70 vs 413-440
//     tok/s, gemma3 28 vs 100, one process switching the hint between steps; no requests at all:
//     230-310 / 85-88): its non-temporal lines are not kept long enough to be read.
// Bits are unchanged (requests only).
// Internal linkage: these are included by files compiled under different ISA flags.
#pragma once
#include <algorithm>
#include <cstdint>

namespace lowbit::cpu {

enum WeightHint : int { kHintT0 = 0, kHintNta = 1 };
// The hint every weight request takes (dispatch.cpp).
extern int g_weight_hint;

namespace {

// One line, near (kFar false: into L1 under t0) or far (into L2 under t0). Under nta both are
// non-temporal, as measured on Zen 5 (above). (Written as this two-way branch on purpose: a
// switch over more hints compiled, with GCC 12, to request loops that measured as if no request
// were made, whatever the hint.)
template <bool kFar = false>
inline void request_weight_line(const void* p) {
    if (g_weight_hint == kHintNta) __builtin_prefetch(p, 0, 0);
    else __builtin_prefetch(p, 0, kFar ? 2 : 3);
}

inline void request_weight_bytes(const uint8_t* p, int64_t bytes) {
    for (int64_t off = 0; off < bytes; off += 64) request_weight_line(p + off);
}

// Lines [sb, sb + 1) * step of base, clipped to end.
template <bool kFar>
inline void request_block(const uint8_t* base, const uint8_t* end, int64_t sb, int64_t step) {
    for (const uint8_t *p = base + sb * step, *e = std::min(p + step, end); p < e; p += 64) request_weight_line<kFar>(p);
}

// The requests of a one-token call's block sb (StripGemvFn's `ahead`): lines [sb, sb + 1) * step
// of ahead, clipped to ahead_end, so that a whole call's requests span one strip's bytes.
inline void request_ahead(const uint8_t* ahead, const uint8_t* ahead_end, int64_t sb, int64_t step) {
    if (ahead) request_block<false>(ahead, ahead_end, sb, step);
}

// The one-token gemv's (the packed GEMMs of both sets): the same lines kGemvFar bytes further
// ahead too, so that more of the weight stream is in flight than the L1's miss buffers hold; under
// t0 into L2 (T1), as e773301 first had them. Session 16 sent them through the near hint, so on
// the Intel Xeon (t0) 32 KB of lines ahead went into a 48 KB L1 and the stream slowed to 25 GB/s
// of a 34 GB/s probe (gemma3's 178 MB Q8_0 head: 7.0 ms a step). Into L2 there, same run,
// interleaved processes, one token, 2 threads: gemma3 92.5 -> 111.6 tok/s, the 0.5B shape 53.6 ->
// 62.8, SmolLM2 1.04x. Far distances 12-24 KB measured alike; 48-96 KB slower.
constexpr int64_t kGemvFar = 24 << 10;
inline void request_far(const uint8_t* ahead, const uint8_t* ahead_end, int64_t sb, int64_t step) {
    if (ahead) request_block<true>(ahead + kGemvFar, ahead_end, sb, step);
}

// One block's requests of a one-token call (request_ahead's lines and request_far's), spread over
// the kernel's slots between its weight loads instead of issued in one burst per block: slot(k)
// requests lines kPer k .. kPer k + kPer - 1 of each, rest(slots) the lines past the slots.
// The same lines either way; only their order among the loads changes. On the Intel Xeon (2 vCPUs,
// AVX-512 / AMX, 34-36 GB/s probe), eighteenth session: gemma3's 178 MB Q8_0 head, 2 threads, 29.3
// -> 32.4-33.8 GB/s; one-token decode, interleaved processes, best of 5 (bench/results/
// ab_spread_requests_s18.json): gemma3 1.30x (roofline 0.64 -> 0.83), the 0.5B shape 1.25x
// (0.64 -> 0.80), SmolLM2 1.16x. A stand-alone stream loop (VNNI work on each line, T0 8 KB
// ahead) showed it first: one request before each line's load read 16.5 GB/s on one thread, a
// burst of the block's 9 requests before its 8 loads 12.7. Requests spread as k n / slots lines a
// slot (a runtime divide and loop per slot) measured 0.8x of one a slot: hence kPer, a constant.
// Under nta (AMD) the block's requests stay one burst at its start, the order the Zen measurements
// above were taken with: spreading them is unmeasured there.
template <int kPer = 1>
struct SpreadRequests {
    const uint8_t *near = nullptr, *far = nullptr;
    int n_near = 0, n_far = 0;   // lines
    SpreadRequests(const uint8_t* ahead, const uint8_t* ahead_end, int64_t sb, int64_t step) {
        if (!ahead) return;
        if (g_weight_hint == kHintNta) {   // AMD: the burst order its measurements were taken with
            request_ahead(ahead, ahead_end, sb, step);
            request_far(ahead, ahead_end, sb, step);
            return;
        }
        near = ahead + sb * step;
        far = near + kGemvFar;
        auto lines = [&](const uint8_t* p) { return p < ahead_end ? int((std::min(p + step, ahead_end) - p + 63) / 64) : 0; };
        n_near = lines(near);
        n_far = lines(far);
    }
    __attribute__((always_inline)) void slot(int k) const {
#pragma GCC unroll 8
        for (int i = kPer * k; i < kPer * k + kPer; ++i) {
            if (i < n_near) request_weight_line<false>(near + 64 * i);
            if (i < n_far) request_weight_line<true>(far + 64 * i);
        }
    }
    void rest(int slots) const {
        for (int i = kPer * slots; i < n_near; ++i) request_weight_line<false>(near + 64 * i);
        for (int i = kPer * slots; i < n_far; ++i) request_weight_line<true>(far + 64 * i);
    }
};

}  // namespace
}  // namespace lowbit::cpu
