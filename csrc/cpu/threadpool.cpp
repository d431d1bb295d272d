// threadpool.cpp: see threadpool.h.
#include "cpu/threadpool.h"

#include "common.h"
#include "cpu/profile.h"

#include <sched.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <string>
#include <utility>

namespace lowbit::cpu {

namespace {
int read_int_file(const std::string& path) {
    std::ifstream f(path);
    int v = -1;
    if (!(f >> v)) return -1;
    return v;
}
}  // namespace

int physical_core_count() {
    cpu_set_t mask;
    CPU_ZERO(&mask);
    if (sched_getaffinity(0, sizeof(mask), &mask) != 0) {
        const unsigned hc = std::thread::hardware_concurrency();
        return hc ? int(hc) : 1;
    }
    std::set<std::pair<int, int>> cores;  // (package, core id) of every CPU we may run on
    int logical = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
        if (!CPU_ISSET(cpu, &mask)) continue;
        ++logical;
        const std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
        const int pkg = read_int_file(base + "physical_package_id");
        const int core = read_int_file(base + "core_id");
        cores.insert(core < 0 ? std::make_pair(-1, cpu) : std::make_pair(pkg, core));
    }
    const int n = int(cores.size());
    return n > 0 ? n : (logical > 0 ? logical : 1);
}

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads > 0 ? n_threads : physical_core_count()) {
    LOWBIT_CHECK(n_threads_ <= kMaxThreads, ValueError, "n_threads ", n_threads_, " exceeds the limit of ",
                 kMaxThreads);
    workers_.reserve(n_threads_ - 1);
    for (int t = 1; t < n_threads_; ++t) workers_.emplace_back([this, t] { worker_loop(t); });
}

ThreadPool::~ThreadPool() {
    stop_.store(true, std::memory_order_seq_cst);
    job_.fetch_add(1, std::memory_order_seq_cst);
    job_.notify_all();
    for (auto& w : workers_) w.join();
}

namespace {

// Waiting budgets. Decode issues a few hundred jobs per token, microseconds apart, with a gap of
// ~0.1 ms between tokens (sampling, Python): spinning covers the first, yielding the second, so
// neither pays a futex wake; after that the thread sleeps (an idle session burns no CPU).
constexpr uint64_t kSpinNs = 20'000;      // busy-poll with pause
constexpr uint64_t kYieldNs = 2'000'000;  // then poll with sched_yield: a busy machine's other threads run

// Polls ready() with pause, then sched_yield, until it is true (returns true) or the budgets are
// spent (returns false).
template <typename Ready>
bool poll(Ready&& ready) {
    const uint64_t t0 = prof::now_ns();
    for (int i = 1;; ++i) {
        if (ready()) return true;
        __builtin_ia32_pause();
        if ((i & 63) == 0 && prof::now_ns() - t0 > kSpinNs) break;
    }
    while (prof::now_ns() - t0 < kSpinNs + kYieldNs) {
        if (ready()) return true;
        sched_yield();
    }
    return ready();
}

}  // namespace

void ThreadPool::wait_for_job(uint32_t seen) {
    if (poll([&] { return job_.load(std::memory_order_acquire) != seen; })) return;
    sleepers_.fetch_add(1, std::memory_order_seq_cst);   // the caller notifies when it sees a sleeper
    while (job_.load(std::memory_order_seq_cst) == seen) job_.wait(seen, std::memory_order_seq_cst);
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
}

void ThreadPool::wait_until_done(uint32_t n_chunks) {
    if (poll([&] { return done_.load(std::memory_order_acquire) == n_chunks; })) return;
    caller_sleeping_.store(true, std::memory_order_seq_cst);   // the last finisher notifies when it sees this
    for (uint32_t d; (d = done_.load(std::memory_order_seq_cst)) != n_chunks;) done_.wait(d, std::memory_order_seq_cst);
    caller_sleeping_.store(false, std::memory_order_relaxed);
}

// Claims chunks of the published job until none is left. A claim succeeds only while claim_
// still names the job whose n_chunks_ was read after it, so a late worker claims nothing.
void ThreadPool::run_chunks(int thread) {
    for (;;) {
        uint64_t w = claim_.load(std::memory_order_acquire);
        for (;;) {
            const uint32_t c = uint32_t(w);
            if (c == kClosed || c >= n_chunks_.load(std::memory_order_relaxed)) return;
            if (claim_.compare_exchange_weak(w, w + 1, std::memory_order_acq_rel, std::memory_order_acquire)) break;
        }
        const int64_t chunk = int64_t(uint32_t(w));
        const uint32_t n = n_chunks_.load(std::memory_order_relaxed);
        if (!failed_.load(std::memory_order_relaxed)) {
            const bool timed = profiling_.load(std::memory_order_relaxed);
            const uint64_t t0 = timed ? prof::now_ns() : 0;
            try {
                call_.load(std::memory_order_relaxed)(ctx_.load(std::memory_order_relaxed), chunk, thread);
            } catch (...) {
                std::lock_guard<std::mutex> lock(error_mutex_);
                if (!error_) error_ = std::current_exception();
                failed_.store(true, std::memory_order_relaxed);
            }
            if (timed) busy_ns_.fetch_add(prof::now_ns() - t0, std::memory_order_relaxed);
        }
        if (done_.fetch_add(1, std::memory_order_seq_cst) + 1 == n && caller_sleeping_.load(std::memory_order_seq_cst))
            done_.notify_one();
    }
}

void ThreadPool::worker_loop(int thread) {
    uint32_t seen = 0;
    for (;;) {
        wait_for_job(seen);
        if (stop_.load(std::memory_order_acquire)) return;
        seen = job_.load(std::memory_order_acquire);
        run_chunks(thread);
    }
}

void ThreadPool::run(int64_t n_chunks, Trampoline call, const void* ctx) {
    if (n_chunks <= 0) return;
    std::lock_guard<std::mutex> call_lock(call_mutex_);
    if (n_threads_ == 1 || n_chunks == 1) {
        for (int64_t c = 0; c < n_chunks; ++c) call(ctx, c, 0);
        return;
    }
    LOWBIT_CHECK(n_chunks < int64_t(kClosed), ValueError, "parallel_for of ", n_chunks, " chunks exceeds 2^32 - 1");
    const bool prof_on = prof::enabled();
    const uint64_t t_publish = prof_on ? prof::now_ns() : 0;
    const uint32_t id = job_.load(std::memory_order_relaxed) + 1;
    // Close the claim word first: from here no late worker of the last job can claim a chunk,
    // so the job's fields may be rewritten.
    claim_.store(uint64_t(id) << 32 | kClosed, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    call_.store(call, std::memory_order_relaxed);
    ctx_.store(ctx, std::memory_order_relaxed);
    n_chunks_.store(uint32_t(n_chunks), std::memory_order_relaxed);
    failed_.store(false, std::memory_order_relaxed);
    error_ = nullptr;
    profiling_.store(prof_on, std::memory_order_relaxed);
    busy_ns_.store(0, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    claim_.store(uint64_t(id) << 32, std::memory_order_release);
    job_.store(id, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) job_.notify_all();
    run_chunks(0);
    wait_until_done(uint32_t(n_chunks));
    if (prof_on) {
        const uint64_t wall = prof::now_ns() - t_publish, busy = busy_ns_.load(std::memory_order_relaxed);
        prof::add_parallel_for(uint64_t(n_threads_) * wall - std::min(uint64_t(n_threads_) * wall, busy));
    }
    std::exception_ptr error;
    {
        std::lock_guard<std::mutex> lock(error_mutex_);
        error = std::exchange(error_, nullptr);
    }
    if (error) std::rethrow_exception(error);
}

}  // namespace lowbit::cpu
