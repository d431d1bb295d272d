// huge_pages.cpp: the arena behind AlignedBuffer's large buffers (common.h: large_alloc, large_free).
//
// Why: a decode step streams every weight once (SmolLM2: 96.6 MB, one buffer per packed matrix)
// and reads each layer's KV rows. On 4 KB pages that is ~24k TLB misses a token, each a page walk
// on the critical path of the weight stream (the hardware prefetchers stop at 4 KB pages too);
// on 2 MB pages it is ~50. The buffers are far smaller than 2 MB each (SmolLM2's packed q|k|v:
// 0.35 MB), so they share regions: only a region, not a buffer, is 2 MB-aligned.
//
// Layout: regions of at least kRegionBytes (whole 2 MB pages, 2 MB-aligned: an over-sized mmap,
// trimmed), advised MADV_HUGEPAGE before any page is touched, so that first touches fault in huge
// pages where the system's transparent-huge-page mode is "madvise" or "always" (under "never"
// they are ordinary pages: nothing else changes). Blocks are 64-byte multiples handed out first
// fit from a region's holes, else from its top; a freed block becomes a hole (merged with its
// neighbours; at the top it lowers the top) whose whole 2 MB pages return to the system. A region
// with no live block is unmapped. Temporaries do not belong here (weights.cpp makes the fused
// copies that are packed afterwards on small pages): their holes would keep memory resident.
#include "common.h"

#include <sys/mman.h>

#include <algorithm>
#include <iterator>
#include <map>
#include <mutex>
#include <new>
#include <vector>

namespace lowbit {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kRegionBytes = size_t(64) << 20;

size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

struct Region {
    uint8_t* base = nullptr;
    size_t size = 0, top = 0, live = 0;
    std::map<size_t, size_t> holes;   // offset -> bytes, below top, never adjacent to each other or to top

    bool contains(const void* p) const {
        const auto* b = static_cast<const uint8_t*>(p);
        return b >= base && b < base + size;
    }
    // A first-fit block of `bytes` (a 64-byte multiple), or nullptr.
    uint8_t* take(size_t bytes) {
        for (auto it = holes.begin(); it != holes.end(); ++it) {
            if (it->second < bytes) continue;
            const size_t off = it->first, left = it->second - bytes;
            holes.erase(it);
            if (left) holes.emplace(off + bytes, left);
            live += bytes;
            return base + off;
        }
        if (size - top < bytes) return nullptr;
        top += bytes;
        live += bytes;
        return base + top - bytes;
    }
    void give_back(uint8_t* p, size_t bytes) {
        live -= bytes;
        size_t off = size_t(p - base), len = bytes;
        auto next = holes.lower_bound(off);
        if (next != holes.begin()) {   // merge with the hole just below
            auto prev = std::prev(next);
            if (prev->first + prev->second == off) {
                off = prev->first;
                len += prev->second;
                holes.erase(prev);
            }
        }
        if (next != holes.end() && off + len == next->first) {   // and with the one just above
            len += next->second;
            holes.erase(next);
        }
        if (off + len == top) top = off;   // at the top: the top comes down
        else holes.emplace(off, len);
        // The whole 2 MB pages of the free range go back to the system (a page shared with a live
        // block stays: splitting it would put that block on 4 KB pages).
        const size_t lo = round_up(off, kHugePage), hi = (off + len) / kHugePage * kHugePage;
        if (lo < hi) madvise(base + lo, hi - lo, MADV_DONTNEED);
    }
};

struct Arena {
    std::mutex mutex;
    std::vector<Region> regions;
};

Arena& arena() {
    static Arena* a = new Arena;   // never destroyed: buffers of static objects may outlive any order
    return *a;
}

Region map_region(size_t bytes) {
    const size_t size = round_up(std::max(bytes, kRegionBytes), kHugePage);
    void* raw = mmap(nullptr, size + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) throw std::bad_alloc();
    auto* start = static_cast<uint8_t*>(raw);
    auto* base = reinterpret_cast<uint8_t*>(round_up(reinterpret_cast<uintptr_t>(start), kHugePage));
    if (base > start) munmap(start, size_t(base - start));   // trim to whole aligned 2 MB pages
    if (base + size < start + size + kHugePage) munmap(base + size, size_t(start + size + kHugePage - (base + size)));
#ifdef MADV_HUGEPAGE
    madvise(base, size, MADV_HUGEPAGE);   // advice only: EINVAL where THP is compiled out changes nothing
#endif
    Region r;
    r.base = base;
    r.size = size;
    return r;
}

}  // namespace

void* large_alloc(size_t bytes) {
    bytes = round_up(std::max<size_t>(bytes, 1), 64);
    Arena& a = arena();
    std::lock_guard<std::mutex> lock(a.mutex);
    for (Region& r : a.regions)
        if (uint8_t* p = r.take(bytes)) return p;
    a.regions.push_back(map_region(bytes));
    return a.regions.back().take(bytes);
}

void large_free(void* p, size_t bytes) {
    if (!p) return;
    bytes = round_up(std::max<size_t>(bytes, 1), 64);
    Arena& a = arena();
    std::lock_guard<std::mutex> lock(a.mutex);
    auto it = std::find_if(a.regions.begin(), a.regions.end(), [&](const Region& r) { return r.contains(p); });
    if (it == a.regions.end()) return;   // not ours: cannot happen through AlignedBuffer
    it->give_back(static_cast<uint8_t*>(p), bytes);
    if (it->live == 0) {
        munmap(it->base, it->size);
        a.regions.erase(it);
    }
}

}  // namespace lowbit
