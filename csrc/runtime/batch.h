// batch.h: the serving calls besides Engine::eval_batch (engine.h) that live in batch.cpp.
//
// decode_run: a run of decode steps of one session in one call, for a server whose only busy
// sequence is decoding: the steps' Python (the scheduler's bookkeeping, a wake-up of the event
// loop per token) runs once per run instead of once per token.
//   feed token -> draw d1 -> feed d1 -> draw d2 ... -> draw dm    (the last draw is not fed)
// It ends after a draw when: m == max_steps; dm is one of stop_ids; `seconds` have passed since
// the call began; `signal` is set (another request arrived); or the draw failed (NaN logits).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/engine.h"

namespace lowbit::runtime {

// Set from another thread to end a decode_run after its running step.
struct RunSignal {
    std::atomic<bool> set{false};
};

struct DecodeRun {
    std::vector<int64_t> drawn;   // d1..dm; every one but the last was fed (n_past grew by m)
    std::string error;            // the failed draw's ValueError text (then drawn holds those
                                  // before it and n_past grew by drawn.size() + 1); else empty
};

// history: the tokens so far (or the tail the sampler's penalty window reads); each draw is
// appended to it for the next. ValueError for max_steps < 1 or a negative time; the errors of
// Engine::eval (closed, bad token, context overflow, Cancelled) propagate, with n_past counting
// the steps that completed.
DecodeRun decode_run(Engine& engine, int32_t token, sampling::Sampler& sampler, std::vector<int64_t> history,
                     int64_t max_steps, const std::vector<int64_t>& stop_ids, double seconds,
                     const RunSignal* signal);

}  // namespace lowbit::runtime
