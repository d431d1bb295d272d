// threadpool.h: persistent worker threads with chunked work stealing.
//
// No global state: each owner (a Model, a benchmark, the Python helper) owns its pool.
// parallel_for hands out chunk indices from one atomic counter, so fast threads take more
// chunks; the calling thread works too. Calls on one pool are serialised; fn must not call
// parallel_for on the same pool (it would wait for itself).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
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
    using ChunkFn = std::function<void(int64_t chunk, int thread)>;
    void parallel_for(int64_t n_chunks, const ChunkFn& fn);

private:
    void worker_loop(int thread);
    void run_chunks(int thread);
    void run_chunks_untimed(int thread);

    int n_threads_;
    std::vector<std::thread> workers_;
    std::mutex call_mutex_;  // one parallel_for at a time

    std::mutex mutex_;
    std::condition_variable start_cv_, done_cv_;
    std::atomic<uint64_t> generation_{0};
    bool stop_ = false;
    std::atomic<int> workers_busy_{0};  // workers that joined the current job and have not finished

    // The job of the current generation.
    const ChunkFn* fn_ = nullptr;
    int64_t n_chunks_ = 0;
    std::atomic<int64_t> next_chunk_{0};
    std::atomic<bool> failed_{false};
    bool profiling_ = false;                  // this job measures its threads' busy time (cpu/profile.h)
    std::atomic<uint64_t> busy_ns_{0};
    std::exception_ptr error_;
};

}  // namespace lowbit::cpu
