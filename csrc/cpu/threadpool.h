// threadpool.h: persistent worker threads with chunked work stealing.
//
// No global state: each owner (a Model, a benchmark, the Python helper) owns its pool.
// parallel_for hands out chunk indices from one atomic word, so fast threads take more chunks;
// the calling thread works too. Calls on one pool are serialised; fn must not call parallel_for
// on the same pool (it would wait for itself).
//
// Dispatch is lock-free: a job is published by one atomic store and claimed chunk by chunk with
// a compare-exchange on
//   claim_ = job id (high 32 bits) | next chunk (low 32 bits; kClosed while the job is set up)
// so a worker that wakes after its job ended (busy machine) can never claim a chunk of another
// job; the caller waits only for chunks that were claimed, never for a late worker. Waiting
// (workers between jobs, the caller for the last chunks) spins briefly, then yields the CPU,
// then sleeps on a futex: decode's back-to-back small jobs do not pay a wake-up each, a busy
// machine's other threads get the cores, and an idle pool sleeps.
#pragma once
#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace lowbit::cpu {

// Physical cores this process may run on (sysfs topology, bounded by the affinity mask).
int physical_core_count();

// Most threads a pool (and so an Engine) may have: more is a mistake, not a machine.
constexpr int kMaxThreads = 512;

class ThreadPool {
public:
    // n_threads <= 0: physical_core_count(); above kMaxThreads: ValueError. Threads = workers + the caller.
    explicit ThreadPool(int n_threads = 0);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }

    // fn(chunk, thread) for every chunk in [0, n_chunks); thread in [0, size()). Returns when all
    // chunks are done; the first exception thrown by fn is rethrown here (remaining chunks skipped).
    // fn is called through a plain function pointer (no std::function, no allocation).
    using ChunkFn = std::function<void(int64_t chunk, int thread)>;
    template <typename Fn>
    void parallel_for(int64_t n_chunks, Fn&& fn) {
        using F = std::remove_reference_t<Fn>;
        run(n_chunks, [](const void* ctx, int64_t c, int t) { (*static_cast<F*>(const_cast<void*>(ctx)))(c, t); },
            static_cast<const void*>(&fn));
    }

private:
    using Trampoline = void (*)(const void* ctx, int64_t chunk, int thread);
    void run(int64_t n_chunks, Trampoline call, const void* ctx);
    void worker_loop(int thread);
    void run_chunks(int thread);
    void wait_for_job(uint32_t seen);
    void wait_until_done(uint32_t n_chunks);

    static constexpr uint32_t kClosed = 0xFFFFFFFFu;

    int n_threads_;
    std::vector<std::thread> workers_;
    std::mutex call_mutex_;  // one parallel_for at a time

    std::atomic<uint64_t> claim_{uint64_t(kClosed)};   // job id << 32 | next chunk
    std::atomic<uint32_t> job_{0};      // id of the latest published job (futex word for sleeping workers)
    std::atomic<uint32_t> done_{0};     // chunks of the current job finished (futex word for the caller)
    std::atomic<int> sleepers_{0};      // workers asleep (or about to sleep) on job_
    std::atomic<bool> caller_sleeping_{false};
    std::atomic<bool> stop_{false};

    // The current job, written while claim_ is closed (atomics: a late worker may read them).
    std::atomic<Trampoline> call_{nullptr};
    std::atomic<const void*> ctx_{nullptr};
    std::atomic<uint32_t> n_chunks_{0};
    std::atomic<bool> failed_{false};
    std::mutex error_mutex_;
    std::exception_ptr error_;
    std::atomic<bool> profiling_{false};   // this job measures its threads' busy time (cpu/profile.h)
    std::atomic<uint64_t> busy_ns_{0};
};

}  // namespace lowbit::cpu
