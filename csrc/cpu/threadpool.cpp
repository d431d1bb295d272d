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
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
    }
    start_cv_.notify_all();
    for (auto& w : workers_) w.join();
}

void ThreadPool::run_chunks(int thread) {
    const uint64_t t0 = profiling_ ? prof::now_ns() : 0;
    run_chunks_untimed(thread);
    if (profiling_) busy_ns_.fetch_add(prof::now_ns() - t0, std::memory_order_relaxed);
}

void ThreadPool::run_chunks_untimed(int thread) {
    for (;;) {
        if (failed_.load(std::memory_order_relaxed)) return;
        const int64_t c = next_chunk_.fetch_add(1, std::memory_order_relaxed);
        if (c >= n_chunks_) return;
        try {
            (*fn_)(c, thread);
        } catch (...) {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!error_) error_ = std::current_exception();
            failed_.store(true, std::memory_order_relaxed);
        }
    }
}

// A worker joins a job only while it still has unclaimed chunks, so a worker that wakes late
// (busy machine) never holds the caller up; the caller waits only for workers that joined.
void ThreadPool::worker_loop(int thread) {
    uint64_t seen = 0;
    for (;;) {
        // Spin for the next job (a decode step issues ~250 small ones back to back), then sleep.
        for (int spin = 0; spin < 200000 && generation_.load(std::memory_order_acquire) == seen; ++spin)
            __builtin_ia32_pause();
        bool joined = false;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            start_cv_.wait(lock, [&] { return stop_ || generation_.load(std::memory_order_relaxed) != seen; });
            if (stop_) return;
            seen = generation_.load(std::memory_order_relaxed);
            joined = fn_ && next_chunk_.load(std::memory_order_relaxed) < n_chunks_;
            if (joined) ++workers_busy_;
        }
        if (!joined) continue;
        run_chunks(thread);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (--workers_busy_ == 0) done_cv_.notify_one();
        }
    }
}

void ThreadPool::parallel_for(int64_t n_chunks, const ChunkFn& fn) {
    if (n_chunks <= 0) return;
    std::lock_guard<std::mutex> call_lock(call_mutex_);
    if (n_threads_ == 1 || n_chunks == 1) {
        for (int64_t c = 0; c < n_chunks; ++c) fn(c, 0);
        return;
    }
    const bool prof_on = prof::enabled();
    const uint64_t t_publish = prof_on ? prof::now_ns() : 0;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        fn_ = &fn;
        n_chunks_ = n_chunks;
        next_chunk_.store(0, std::memory_order_relaxed);
        failed_.store(false, std::memory_order_relaxed);
        error_ = nullptr;
        workers_busy_ = 0;
        profiling_ = prof_on;
        busy_ns_.store(0, std::memory_order_relaxed);
        generation_.fetch_add(1, std::memory_order_release);
    }
    start_cv_.notify_all();
    run_chunks(0);
    // Joined workers usually finish within microseconds of the caller: spin before sleeping
    // (a futex sleep + wake costs more than one of decode's small matvecs).
    for (int spin = 0; spin < 100000 && workers_busy_.load(std::memory_order_acquire) != 0; ++spin)
        __builtin_ia32_pause();
    std::exception_ptr error;
    {
        std::unique_lock<std::mutex> lock(mutex_);
        done_cv_.wait(lock, [&] { return workers_busy_ == 0; });
        error = std::exchange(error_, nullptr);
        fn_ = nullptr;
    }
    if (prof_on) {
        const uint64_t wall = prof::now_ns() - t_publish, busy = busy_ns_.load(std::memory_order_relaxed);
        prof::add_parallel_for(uint64_t(n_threads_) * wall - std::min(uint64_t(n_threads_) * wall, busy));
    }
    if (error) std::rethrow_exception(error);
}

}  // namespace lowbit::cpu
