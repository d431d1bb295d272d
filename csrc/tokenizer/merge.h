// merge.h: greedy pair merging over a linked list of symbols, the core of both BPE (lowest merge
// rank first) and SPM (highest piece score first): the best adjacent pair is joined (ties: the
// leftmost), its neighbours are re-queued, and a queued pair whose sides changed since is stale.
#pragma once
#include <cstdint>
#include <optional>
#include <queue>
#include <vector>

namespace lowbit::tokenizer {

struct MergeSymbol {
    uint32_t first, size;   // bytes of the text; size 0 once merged into its left neighbour
    int32_t prev, next;     // -1 at the ends
};

// Symbols over consecutive byte spans: sizes[i] bytes each, linked in order.
inline std::vector<MergeSymbol> chain_symbols(const std::vector<uint32_t>& sizes) {
    const int32_t n = int32_t(sizes.size());
    std::vector<MergeSymbol> syms(sizes.size());
    uint32_t first = 0;
    for (int32_t i = 0; i < n; ++i) {
        syms[size_t(i)] = {first, sizes[size_t(i)], i - 1, i + 1 < n ? i + 1 : -1};
        first += sizes[size_t(i)];
    }
    return syms;
}

// key(a, b) -> std::optional<double>: the priority of joining adjacent symbols a and b (higher
// first; BPE passes -rank, SPM the score), nullopt when they cannot join.
template <typename Key>
void merge_symbols(std::vector<MergeSymbol>& syms, Key&& key) {
    struct Candidate {
        double key;
        int32_t left, right;
        uint32_t size;          // joined size when queued (stale when the sides changed since)
        bool operator<(const Candidate& o) const {   // priority_queue top: best key, then leftmost
            return key < o.key || (key == o.key && left > o.left);
        }
    };
    std::priority_queue<Candidate> queue;
    auto try_pair = [&](int32_t left, int32_t right) {
        if (left == -1 || right == -1) return;
        const MergeSymbol& a = syms[size_t(left)];
        const MergeSymbol& b = syms[size_t(right)];
        if (const std::optional<double> k = key(a, b)) queue.push({*k, left, right, a.size + b.size});
    };
    for (int32_t i = 0; i + 1 < int32_t(syms.size()); ++i) try_pair(i, i + 1);
    while (!queue.empty()) {
        const Candidate c = queue.top();
        queue.pop();
        MergeSymbol& a = syms[size_t(c.left)];
        MergeSymbol& b = syms[size_t(c.right)];
        if (a.size == 0 || b.size == 0 || a.size + b.size != c.size) continue;   // stale
        a.size += b.size;
        b.size = 0;
        a.next = b.next;
        if (b.next != -1) syms[size_t(b.next)].prev = c.left;
        try_pair(a.prev, c.left);
        try_pair(c.left, a.next);
    }
}

}  // namespace lowbit::tokenizer
