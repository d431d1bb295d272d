// profile.h: per-op wall-clock totals of the forward pass, opt-in (LOWBIT_PROFILE=1 in the
// environment, or set_enabled), one relaxed atomic load per op when off.
//
// Timing is exclusive: an op scope opened inside another (activation quantization inside a
// matmul) is subtracted from its parent, so the ops' seconds add up to the passes' wall time.
// Idle is what the thread pool measured for the parallel_for calls made while the op was the
// innermost one on the calling thread: threads x call wall - time spent running chunks (waking
// workers, waiting at the end for the slowest thread, load imbalance). Totals are process-wide
// (every engine and session adds to them; concurrent passes each add their own time).
#pragma once
#include <cstdint>

namespace lowbit::cpu::prof {

enum class Op : int {
    Embed,        // token embedding rows and RoPE tables of the pass
    Norm,         // pre-norms (attention, FFN) and the output norm
    ActQuant,     // activation quantization of the weight matmuls
    MatQKV,       // q / k / v projection (fused or three)
    QKVPost,      // biases, QK-norm, RoPE, K/V into the cache
    Attention,    // softmax(q k^T) v
    MatOut,       // attention output projection
    Residual,     // post-norms and the residual add
    MatGateUp,    // gate / up projection (fused or two)
    FfnAct,       // SiLU / GELU gating of one row (several: made inside MatDown's ActQuant, matmul.h RowMaker)
    MatDown,      // FFN down projection
    Moe,          // expert FFN (router, experts, combine)
    OutputHead,   // logits matmul, scaling, soft-cap, scatter
    Count
};
constexpr int kOps = int(Op::Count);
const char* op_name(Op op);

bool enabled();
void set_enabled(bool on);
void reset();

struct OpTotals {
    uint64_t ns = 0, calls = 0, idle_ns = 0, parallel_fors = 0;
};
struct Snapshot {
    OpTotals ops[kOps];
    uint64_t passes = 0, rows = 0;   // forward passes and their batch rows
};
Snapshot snapshot();

uint64_t now_ns();
void add_pass(int64_t rows);
// Called by the pool for each parallel_for on the calling thread (only while enabled).
void add_parallel_for(uint64_t idle_ns);

// Times its lifetime as `op` on this thread (exclusive of nested scopes); inert when profiling is off.
class Scope {
public:
    explicit Scope(Op op) : op_(op), on_(enabled()) { if (on_) open(); }
    ~Scope() { if (on_) close(); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

private:
    void open();
    void close();
    friend void add_parallel_for(uint64_t);
    Op op_;
    bool on_;
    Scope* parent_ = nullptr;
    uint64_t t0_ = 0, child_ns_ = 0, idle_ns_ = 0, pfors_ = 0;
};

}  // namespace lowbit::cpu::prof
