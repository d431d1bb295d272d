// observer.cpp: the imatrix (sum of squares) and GPTQ (Gram matrix) observers of observer.h.
#include "model/observer.h"

#include <algorithm>

#include "common.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_THREAD__)
// One binary, two code paths chosen by the loader: AVX2+FMA where the CPU has them. Not under
// ThreadSanitizer: its instrumented ifunc resolver would run before the TSan runtime (a crash at load).
#define LOWBIT_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define LOWBIT_CLONES
#endif

namespace lowbit::model {
namespace {

constexpr int64_t kTileI = 32;    // rows of g per work item
constexpr int64_t kTileJ = 256;   // columns of g per work item (a 32 x 256 double tile: 64 KiB)

// g[i0..i1) x [j0..j1) += x[:, i]^T x[:, j], four input rows per pass over the tile so each
// load and store of g carries four multiply-adds. xj: scratch of 4 * kTileJ doubles.
LOWBIT_CLONES
void gram_tile(const float* x, int64_t n, int64_t cols, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
               double* g, double* xj) {
    const int64_t w = j1 - j0;
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) {
        const float* r[4] = {x + t * cols, x + (t + 1) * cols, x + (t + 2) * cols, x + (t + 3) * cols};
        for (int k = 0; k < 4; ++k)
            for (int64_t j = 0; j < w; ++j) xj[k * kTileJ + j] = double(r[k][j0 + j]);
        for (int64_t i = i0; i < i1; ++i) {
            const double a0 = r[0][i], a1 = r[1][i], a2 = r[2][i], a3 = r[3][i];
            double* row = g + i * cols + j0;
            const double *b0 = xj, *b1 = xj + kTileJ, *b2 = xj + 2 * kTileJ, *b3 = xj + 3 * kTileJ;
            for (int64_t j = 0; j < w; ++j) row[j] += a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j];
        }
    }
    for (; t < n; ++t) {
        const float* r = x + t * cols;
        for (int64_t j = 0; j < w; ++j) xj[j] = double(r[j0 + j]);
        for (int64_t i = i0; i < i1; ++i) {
            const double a = r[i];
            double* row = g + i * cols + j0;
            for (int64_t j = 0; j < w; ++j) row[j] += a * xj[j];
        }
    }
}

}  // namespace

void add_gram(const float* x, int64_t n, int64_t cols, double* g, cpu::ThreadPool& pool) {
    // Tiles on or above the diagonal (by tile), then the lower triangle mirrored from the upper.
    const int64_t ni = (cols + kTileI - 1) / kTileI, nj = (cols + kTileJ - 1) / kTileJ;
    std::vector<std::pair<int64_t, int64_t>> tiles;
    for (int64_t bi = 0; bi < ni; ++bi)
        for (int64_t bj = (bi * kTileI) / kTileJ; bj < nj; ++bj) tiles.emplace_back(bi, bj);
    std::vector<std::vector<double>> scratch(size_t(pool.size()), std::vector<double>(size_t(4 * kTileJ)));
    // the upper triangle of g only: tiles overlapping the diagonal also write some lower cells,
    // which the mirror below overwrites; each cell is written by exactly one tile
    pool.parallel_for(int64_t(tiles.size()), [&](int64_t k, int thread) {
        const auto [bi, bj] = tiles[size_t(k)];
        const int64_t i0 = bi * kTileI, i1 = std::min(cols, i0 + kTileI);
        const int64_t j0 = bj * kTileJ, j1 = std::min(cols, j0 + kTileJ);
        gram_tile(x, n, cols, i0, i1, j0, j1, g, scratch[size_t(thread)].data());
    });
    pool.parallel_for((cols + kTileI - 1) / kTileI, [&](int64_t b, int) {
        const int64_t i0 = b * kTileI, i1 = std::min(cols, i0 + kTileI);
        for (int64_t i = i0; i < i1; ++i)
            for (int64_t j = 0; j < i; ++j) g[i * cols + j] = g[j * cols + i];
    });
}

void SumSquaresObserver::observe(const std::vector<std::string>& names, const float* x, int64_t n,
                                 int64_t cols, cpu::ThreadPool& pool) {
    std::vector<double> sums(size_t(cols), 0.0);
    const int64_t n_blocks = (cols + 255) / 256;
    pool.parallel_for(n_blocks, [&](int64_t b, int) {
        const int64_t j0 = b * 256, j1 = std::min(cols, j0 + 256);
        for (int64_t t = 0; t < n; ++t) {
            const float* r = x + t * cols;
            for (int64_t j = j0; j < j1; ++j) sums[size_t(j)] += double(r[j]) * double(r[j]);
        }
    });
    std::lock_guard<std::mutex> lock(mutex_);
    for (const std::string& name : names) {
        Entry& e = entries_[name];
        if (e.sums.empty()) e.sums.assign(size_t(cols), 0.0);
        LOWBIT_CHECK(int64_t(e.sums.size()) == cols, ValueError, name, ": inputs of ", cols,
                     " columns, earlier ones had ", e.sums.size());
        for (int64_t j = 0; j < cols; ++j) e.sums[size_t(j)] += sums[size_t(j)];
        e.rows += n;
    }
}

std::map<std::string, SumSquaresObserver::Entry> SumSquaresObserver::entries() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_;
}

void SumSquaresObserver::clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.clear();
}

void GramObserver::observe(const std::vector<std::string>& names, const float* x, int64_t n, int64_t cols,
                           cpu::ThreadPool& pool) {
    if (names.empty()) return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto known = alias_.find(names.front());
    const std::string key = known == alias_.end() ? names.front() : known->second;
    Entry& e = entries_[key];
    if (e.gram.empty()) {
        e.cols = cols;
        e.gram.assign(size_t(cols) * size_t(cols), 0.0);
    }
    LOWBIT_CHECK(e.cols == cols, ValueError, key, ": inputs of ", cols, " columns, earlier ones had ", e.cols);
    for (const std::string& name : names) alias_.emplace(name, key);
    add_gram(x, n, cols, e.gram.data(), pool);
    e.rows += n;
}

std::vector<std::string> GramObserver::names() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> out;
    for (const auto& [name, key] : alias_) out.push_back(name);
    return out;
}

const GramObserver::Entry& GramObserver::entry(const std::string& name) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = alias_.find(name);
    LOWBIT_CHECK(it != alias_.end(), ValueError, "no inputs observed for '", name, "'");
    return entries_.at(it->second);
}

void GramObserver::clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.clear();
    alias_.clear();
}

}  // namespace lowbit::model
