// profile.cpp: see profile.h.
#include "cpu/profile.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>

namespace lowbit::cpu::prof {
namespace {

bool env_enabled() {
    const char* v = std::getenv("LOWBIT_PROFILE");
    return v && *v && std::strcmp(v, "0") != 0;
}

std::atomic<bool> g_enabled{env_enabled()};

struct AtomicTotals {
    std::atomic<uint64_t> ns{0}, calls{0}, idle_ns{0}, parallel_fors{0};
};
AtomicTotals g_ops[kOps];
std::atomic<uint64_t> g_passes{0}, g_rows{0};

thread_local Scope* t_current = nullptr;   // innermost open scope of this thread

constexpr const char* kNames[kOps] = {"embed",     "norm",     "act_quant", "matmul_qkv", "qkv_post",
                                      "attention", "matmul_o", "residual",  "matmul_gate_up", "ffn_act",
                                      "matmul_down", "moe",    "output_head"};

}  // namespace

const char* op_name(Op op) { return kNames[int(op)]; }
bool enabled() { return g_enabled.load(std::memory_order_relaxed); }
void set_enabled(bool on) { g_enabled.store(on, std::memory_order_relaxed); }

void reset() {
    for (AtomicTotals& t : g_ops) {
        t.ns.store(0); t.calls.store(0); t.idle_ns.store(0); t.parallel_fors.store(0);
    }
    g_passes.store(0);
    g_rows.store(0);
}

Snapshot snapshot() {
    Snapshot s;
    for (int i = 0; i < kOps; ++i) {
        s.ops[i].ns = g_ops[i].ns.load();
        s.ops[i].calls = g_ops[i].calls.load();
        s.ops[i].idle_ns = g_ops[i].idle_ns.load();
        s.ops[i].parallel_fors = g_ops[i].parallel_fors.load();
    }
    s.passes = g_passes.load();
    s.rows = g_rows.load();
    return s;
}

uint64_t now_ns() {
    return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                        std::chrono::steady_clock::now().time_since_epoch()).count());
}

void add_pass(int64_t rows) {
    if (!enabled()) return;
    g_passes.fetch_add(1, std::memory_order_relaxed);
    g_rows.fetch_add(uint64_t(rows), std::memory_order_relaxed);
}

void add_parallel_for(uint64_t idle_ns) {
    Scope* s = t_current;
    if (!s) return;
    s->idle_ns_ += idle_ns;
    ++s->pfors_;
}

void Scope::open() {
    parent_ = t_current;
    t_current = this;
    t0_ = now_ns();
}

void Scope::close() {
    const uint64_t wall = now_ns() - t0_;
    t_current = parent_;
    if (parent_) parent_->child_ns_ += wall;
    AtomicTotals& t = g_ops[int(op_)];
    t.ns.fetch_add(wall - std::min(wall, child_ns_), std::memory_order_relaxed);
    t.calls.fetch_add(1, std::memory_order_relaxed);
    t.idle_ns.fetch_add(idle_ns_, std::memory_order_relaxed);
    t.parallel_fors.fetch_add(pfors_, std::memory_order_relaxed);
}

}  // namespace lowbit::cpu::prof
