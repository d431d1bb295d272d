// repack.cpp: PackedLayout (kernels.h): the byte permutation between GGML rows of the legacy
// 32-blocks (and IQ4_NL, laid out as Q4_0) or the k-quants (Q2_K .. Q6_K; IQ4_XS alike) and packed strips, both ways. ISA-independent; the packed strip GEMMs that read the
// result are in packed_avx512.cpp / packed_q6k_avx512.cpp and strip_avx2.h.
#include <cstring>
#include <vector>

#include "common.h"
#include "cpu/kernels.h"

namespace lowbit::cpu {
namespace {

struct Shape {
    int qs_bytes;   // quant bytes per block and row
    bool qh, min;
};

bool shape_of(GGMLType type, Shape& s) {
    switch (type) {
        case GGMLType::Q4_0: s = {16, false, false}; return true;
        case GGMLType::IQ4_NL: s = {16, false, false}; return true;   // Q4_0's bytes: d, then 16 nibble bytes
        case GGMLType::Q4_1: s = {16, false, true}; return true;
        case GGMLType::Q5_0: s = {16, true, false}; return true;
        case GGMLType::Q5_1: s = {16, true, true}; return true;
        case GGMLType::Q8_0: s = {32, false, false}; return true;
        default: return false;
    }
}

Shape checked_shape(GGMLType type) {
    Shape s{};
    LOWBIT_CHECK(shape_of(type, s), ValueError, "GGML type id ", uint32_t(type), " has no packed layout");
    return s;
}

constexpr int64_t round64(int64_t b) { return (b + 63) / 64 * 64; }

// A k-quant super-block's fields (kernels.h, PackedLayout): the dword-interleaved runs of its
// record (bytes of the GGML block -> offset in the record, 16 x the bytes), then d (and dmin).
struct KField {
    int block_off, bytes, record_off;
};
struct KShape {
    KField f[3];
    int n_fields, d_off, m_off, block_bytes, record_bytes;   // m_off < 0: no dmin
};
bool kshape_of(GGMLType type, KShape& k) {
    switch (type) {   // each record's runs in the order kernels.h lists them
        case GGMLType::Q4_K: k = {{{16, 128, 0}, {4, 12, 2048}, {}}, 2, 0, 2, 144, 2240}; return true;
        case GGMLType::Q5_K: k = {{{48, 128, 0}, {16, 32, 2048}, {4, 12, 2560}}, 3, 0, 2, 176, 2752}; return true;
        case GGMLType::Q6_K: k = {{{0, 128, 0}, {128, 64, 2048}, {192, 16, 3072}}, 3, 208, -1, 210, 3328}; return true;
        case GGMLType::Q2_K: k = {{{0, 16, 0}, {16, 64, 256}, {}}, 2, 80, 82, 84, 1280}; return true;
        case GGMLType::Q3_K: k = {{{0, 32, 0}, {32, 64, 512}, {96, 12, 1536}}, 3, 108, -1, 110, 1728}; return true;
        // IQ4_XS: qs and scales_l as runs; d, and scales_h where the others keep dmin
        case GGMLType::IQ4_XS: k = {{{8, 128, 0}, {4, 4, 2048}, {}}, 2, 0, 2, 136, 2112}; return true;
        default: return false;
    }
}

// Super-block b of row j <-> its place in the strip. to_strip: GGML block -> strip, else back.
void move_kblock(const KShape& k, const PackedLayout& L, uint8_t* strip, int64_t b, int j, uint8_t* blk, bool to_strip) {
    auto mv = [to_strip](uint8_t* in_strip, uint8_t* in_block, size_t bytes) {
        if (to_strip) std::memcpy(in_strip, in_block, bytes);
        else std::memcpy(in_block, in_strip, bytes);
    };
    uint8_t* rec = strip + b * L.sb_bytes;
    for (int i = 0; i < k.n_fields; ++i)
        for (int w = 0; w < k.f[i].bytes / 4; ++w)   // dword w of the field: lane j of run w
            mv(rec + k.f[i].record_off + (w * kStripRows + j) * 4, blk + k.f[i].block_off + 4 * w, 4);
    mv(strip + L.d + (b * kStripRows + j) * 2, blk + k.d_off, 2);
    if (k.m_off >= 0) mv(strip + L.m + (b * kStripRows + j) * 2, blk + k.m_off, 2);
}

// Where the fields of one GGML legacy block lie (d first in every one; m, qh, qs after it).
struct BlockFields {
    int m = -1, qh = -1, qs = 0, bytes = 0;
};
BlockFields fields_of(GGMLType type) {
    switch (type) {
        case GGMLType::Q4_0:
        case GGMLType::IQ4_NL: return {-1, -1, 2, 18};
        case GGMLType::Q4_1: return {2, -1, 4, 20};
        case GGMLType::Q5_0: return {-1, 2, 6, 22};
        case GGMLType::Q5_1: return {2, 4, 8, 24};
        default: return {-1, -1, 2, 34};   // Q8_0
    }
}

// One block of one row <-> its place in the strip. to_strip: GGML block -> strip, else back.
void move_block(const Shape& s, const BlockFields& f, const PackedLayout& L, uint8_t* strip, int64_t b, int j,
                uint8_t* blk, bool to_strip) {
    auto mv = [to_strip](uint8_t* in_strip, uint8_t* in_block, size_t bytes) {
        if (to_strip) std::memcpy(in_strip, in_block, bytes);
        else std::memcpy(in_block, in_strip, bytes);
    };
    uint8_t* qs = strip + L.qs + b * int64_t(s.qs_bytes) * kStripRows;
    for (int k = 0; k < s.qs_bytes / 4; ++k) mv(qs + (k * kStripRows + j) * 4, blk + f.qs + 4 * k, 4);
    mv(strip + L.d + (b * kStripRows + j) * 2, blk, 2);
    if (s.min) mv(strip + L.m + (b * kStripRows + j) * 2, blk + f.m, 2);
    if (!s.qh) return;
    // element e = 4g + i: bit 4j + i of word g, i.e. word g's nibble j = bits 4g..4g+3 of the row's qh
    uint64_t words[8];
    std::memcpy(words, strip + L.qh + b * 64, 64);
    uint32_t h = 0;
    if (to_strip) {
        std::memcpy(&h, blk + f.qh, 4);
        for (int g = 0; g < 8; ++g)
            words[g] = (words[g] & ~(uint64_t(0xF) << (4 * j))) | uint64_t(h >> (4 * g) & 0xFu) << (4 * j);
        std::memcpy(strip + L.qh + b * 64, words, 64);
        return;
    }
    for (int g = 0; g < 8; ++g) h |= uint32_t(words[g] >> (4 * j) & 0xFu) << (4 * g);
    std::memcpy(blk + f.qh, &h, 4);
}

}  // namespace

const uint8_t* pack_rows_scratch(GGMLType type, int64_t rows, int64_t cols, const void* src, size_t row_bytes) {
    thread_local std::vector<uint8_t> packed;
    packed.resize(size_t(packed_bytes(type, rows, cols)) + 64);
    uint8_t* p = packed.data() + (64 - reinterpret_cast<uintptr_t>(packed.data()) % 64) % 64;
    pack_rows(type, rows, cols, src, row_bytes, p);
    return p;
}

PackedRecordView::PackedRecordView(GGMLType type, const void* strip, int64_t n, int block) {
    const PackedLayout L(type, n);
    rec = static_cast<const uint8_t*>(strip);
    d = rec + L.d, m = rec + L.m;
    sb_bytes = L.sb_bytes;
    bytes_per_block = L.bytes_per_block(n, block);
}

bool PackedLayout::has(GGMLType type) {
    Shape s{};
    KShape k{};
    return shape_of(type, s) || kshape_of(type, k);
}

PackedLayout::PackedLayout(GGMLType type, int64_t n) {
    if (KShape k{}; kshape_of(type, k)) {
        LOWBIT_CHECK(n > 0 && n % QK_K == 0, ValueError, "packed k-quant rows need a positive multiple of 256 columns, got ", n);
        nb = n / QK_K;
        sb_bytes = k.record_bytes;
        d = nb * sb_bytes;
        m = d + nb * 2 * kStripRows;
        strip_bytes = round64(k.m_off >= 0 ? m + nb * 2 * kStripRows : m);
        return;
    }
    const Shape s = checked_shape(type);
    LOWBIT_CHECK(n > 0 && n % 32 == 0, ValueError, "packed rows need a positive multiple of 32 columns, got ", n);
    nb = n / 32;
    qs = 0;
    qh = round64(nb * s.qs_bytes * kStripRows);
    d = qh + (s.qh ? nb * 64 : 0);
    m = round64(d + nb * 2 * kStripRows);
    strip_bytes = round64(s.min ? m + nb * 2 * kStripRows : m);
}

namespace {
// One block (legacy) or super-block (k-quant) b of row j <-> the strip; bytes: its GGML size.
struct BlockMover {
    PackedLayout L;
    KShape k{};
    bool kquant;
    Shape s{};
    BlockFields f;
    int bytes;
    BlockMover(GGMLType t, int64_t cols) : L(t, cols), kquant(kshape_of(t, k)), s(kquant ? Shape{} : checked_shape(t)),
                                           f(fields_of(t)), bytes(kquant ? k.block_bytes : f.bytes) {}
    void operator()(uint8_t* strip, int64_t b, int j, uint8_t* blk, bool to_strip) const {
        if (kquant) move_kblock(k, L, strip, b, j, blk, to_strip);
        else move_block(s, f, L, strip, b, j, blk, to_strip);
    }
};
}  // namespace

void pack_strips(GGMLType type, int64_t cols, const RowRun* runs, int n_runs, size_t row_bytes, int64_t s0,
                 int64_t s1, void* dst) {
    const BlockMover mover(type, cols);
    const PackedLayout& L = mover.L;
    auto* out = static_cast<uint8_t*>(dst);
    int run = 0;
    int64_t run_start = 0;   // first row of runs[run]
    for (int64_t s = s0; s < s1; ++s) {
        uint8_t* strip = out + s * L.strip_bytes;
        std::memset(strip, 0, size_t(L.strip_bytes));   // padding and the rows past the last
        for (int j = 0; j < kStripRows; ++j) {
            const int64_t r = s * kStripRows + j;
            while (run < n_runs && r >= run_start + runs[run].rows) run_start += runs[run++].rows;
            if (run == n_runs) break;
            const auto* row = static_cast<const uint8_t*>(runs[run].data) + size_t(r - run_start) * row_bytes;
            for (int64_t b = 0; b < L.nb; ++b)
                mover(strip, b, j, const_cast<uint8_t*>(row + b * mover.bytes), true);
        }
    }
}

void pack_rows(GGMLType type, int64_t rows, int64_t cols, const void* src, size_t row_bytes, void* dst) {
    const RowRun run{src, rows};
    pack_strips(type, cols, &run, 1, row_bytes, 0, (rows + kStripRows - 1) / kStripRows, dst);
}

void unpack_strip(GGMLType type, int64_t cols, const void* packed, int64_t s, int nrows, void* dst, size_t row_bytes) {
    const BlockMover mover(type, cols);
    const PackedLayout& L = mover.L;
    auto* strip = const_cast<uint8_t*>(static_cast<const uint8_t*>(packed)) + s * L.strip_bytes;   // read only
    for (int j = 0; j < nrows; ++j) {
        auto* row = static_cast<uint8_t*>(dst) + size_t(j) * row_bytes;
        for (int64_t b = 0; b < L.nb; ++b) mover(strip, b, j, row + b * mover.bytes, false);
    }
}

void unpack_row(GGMLType type, int64_t cols, const void* packed, int64_t r, void* dst) {
    const BlockMover mover(type, cols);
    const PackedLayout& L = mover.L;
    auto* strip = const_cast<uint8_t*>(static_cast<const uint8_t*>(packed)) + r / kStripRows * L.strip_bytes;   // read only
    for (int64_t b = 0; b < L.nb; ++b)
        mover(strip, b, int(r % kStripRows), static_cast<uint8_t*>(dst) + b * mover.bytes, false);
}

}  // namespace lowbit::cpu
