// observer.h: what the forward pass reports about its weight matmuls, and the two statistics
// lowbit's calibration needs (llama.cpp's eval callback / mlx-lm's Catcher, in the engine).
//
// forward() calls observe() with the float input x (n, cols) of every weight matmul before it
// runs (before any activation quantization), named by the GGUF tensors it multiplies: a fused
// copy [q | k | v] or [gate | up] made at load reports its source tensors ("blk.3.attn_q.weight",
// "blk.3.attn_k.weight", "blk.3.attn_v.weight"), a tensor that is fused in the file (phi3's
// attn_qkv) reports itself. With no observer attached nothing is computed.
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "cpu/threadpool.h"

namespace lowbit::model {

class MatmulObserver {
public:
    virtual ~MatmulObserver() = default;
    // x: (n, cols) row-major. names: the tensors that multiply this same input. Called on the
    // thread running forward(); `pool` may be used for the observer's own work.
    virtual void observe(const std::vector<std::string>& names, const float* x, int64_t n, int64_t cols,
                         cpu::ThreadPool& pool) = 0;
};

// llama.cpp's imatrix statistics: per tensor, sum over observed rows of x_j^2 (float64) and the
// number of rows.
class SumSquaresObserver final : public MatmulObserver {
public:
    struct Entry {
        std::vector<double> sums;   // (cols,)
        int64_t rows = 0;
    };
    void observe(const std::vector<std::string>& names, const float* x, int64_t n, int64_t cols,
                 cpu::ThreadPool& pool) override;
    std::map<std::string, Entry> entries() const;
    void clear();

private:
    mutable std::mutex mutex_;
    std::map<std::string, Entry> entries_;
};

// GPTQ's Hessian: per input, X^T X summed over observed rows in float64 (cols, cols), and the row
// count. Tensors that share an input (q, k, v; gate, up) share one matrix.
class GramObserver final : public MatmulObserver {
public:
    struct Entry {
        std::vector<double> gram;   // (cols, cols), symmetric
        int64_t cols = 0, rows = 0;
    };
    void observe(const std::vector<std::string>& names, const float* x, int64_t n, int64_t cols,
                 cpu::ThreadPool& pool) override;
    // name -> the entry of its input (several names may share one), and the shared key's name
    std::vector<std::string> names() const;
    const Entry& entry(const std::string& name) const;   // throws ValueError for an unknown name
    void clear();

private:
    mutable std::mutex mutex_;
    std::map<std::string, Entry> entries_;        // by the first name of each input
    std::map<std::string, std::string> alias_;    // every observed name -> key in entries_
};

// g (cols, cols) += x^T x for x (n, cols), upper and lower triangles both written.
void add_gram(const float* x, int64_t n, int64_t cols, double* g, cpu::ThreadPool& pool);

}  // namespace lowbit::model
