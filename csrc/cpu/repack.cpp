// repack.cpp: PackedLayout (kernels.h): the byte permutation between GGML rows of the legacy
// 32-blocks or the k-quants (Q4_K, Q5_K, Q6_K) and packed strips, both ways. ISA-independent; the packed strip GEMMs that read the
// result are in packed_avx512.cpp / packed_q6k_avx512.cpp and strip_avx2.h.
#include <cstring>

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
    switch (type) {   // qs / ql first, then qh, then the scales, as kernels.h lists them
        case GGMLType::Q4_K: k = {{{16, 128, 0}, {4, 12, 2048}, {}}, 2, 0, 2, 144, 2240}; return true;
        case GGMLType::Q5_K: k = {{{48, 128, 0}, {16, 32, 2048}, {4, 12, 2560}}, 3, 0, 2, 176, 2752}; return true;
        case GGMLType::Q6_K: k = {{{0, 128, 0}, {128, 64, 2048}, {192, 16, 3072}}, 3, 208, -1, 210, 3328}; return true;
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
        case GGMLType::Q4_0: return {-1, -1, 2, 18};
        case GGMLType::Q4_1: return {2, -1, 4, 20};
        case GGMLType::Q5_0: return {-1, 2, 6, 22};
        case GGMLType::Q5_1: return {2, 4, 8, 24};
        default: return {-1, -1, 2, 34};   // Q8_0
    }
}

// One block of one row <-> its place in the strip. to_strip: GGML block -> strip, else back.
void move_block(GGMLType type, const PackedLayout& L, uint8_t* strip, int64_t b, int j, uint8_t* blk, bool to_strip) {
    const Shape s = checked_shape(type);
    const BlockFields f = fields_of(type);
    auto mv = [to_strip](uint8_t* in_strip, uint8_t* in_block, size_t bytes) {
        if (to_strip) std::memcpy(in_strip, in_block, bytes);
        else std::memcpy(in_block, in_strip, bytes);
    };
    uint8_t* qs = strip + L.qs + b * int64_t(s.qs_bytes) * kStripRows;
    for (int k = 0; k < s.qs_bytes / 4; ++k) mv(qs + (k * kStripRows + j) * 4, blk + f.qs + 4 * k, 4);
    mv(strip + L.d + (b * kStripRows + j) * 2, blk, 2);
    if (s.min) mv(strip + L.m + (b * kStripRows + j) * 2, blk + f.m, 2);
    if (!s.qh) return;
    auto* words = reinterpret_cast<uint64_t*>(strip + L.qh + b * 64);
    uint32_t h = 0;   // bit e: bit 4 of element e
    if (to_strip) std::memcpy(&h, blk + f.qh, 4);
    for (int e = 0; e < 32; ++e) {   // element e = 4g + i: bit 4j + i of word g
        const uint64_t bit = uint64_t(1) << (4 * j + e % 4);
        if (to_strip) words[e / 4] = (words[e / 4] & ~bit) | ((h >> e & 1u) ? bit : 0);
    }
    if (to_strip) return;
    for (int e = 0; e < 32; ++e)
        if (words[e / 4] >> (4 * j + e % 4) & 1u) h |= 1u << e;
    std::memcpy(blk + f.qh, &h, 4);
}

}  // namespace

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
    GGMLType type;
    PackedLayout L;
    KShape k{};
    bool kquant;
    int bytes;
    BlockMover(GGMLType t, int64_t cols) : type(t), L(t, cols), kquant(kshape_of(t, k)),
                                           bytes(kquant ? k.block_bytes : fields_of(t).bytes) {}
    void operator()(uint8_t* strip, int64_t b, int j, uint8_t* blk, bool to_strip) const {
        if (kquant) move_kblock(k, L, strip, b, j, blk, to_strip);
        else move_block(type, L, strip, b, j, blk, to_strip);
    }
};
}  // namespace

void pack_rows(GGMLType type, int64_t rows, int64_t cols, const void* src, size_t row_bytes, void* dst) {
    const BlockMover mover(type, cols);
    const PackedLayout& L = mover.L;
    const int64_t n_strips = (rows + kStripRows - 1) / kStripRows;
    auto* out = static_cast<uint8_t*>(dst);
    std::memset(out, 0, size_t(n_strips * L.strip_bytes));
    for (int64_t s = 0; s < n_strips; ++s)
        for (int j = 0; j < kStripRows && s * kStripRows + j < rows; ++j) {
            const auto* row = static_cast<const uint8_t*>(src) + size_t(s * kStripRows + j) * row_bytes;
            for (int64_t b = 0; b < L.nb; ++b)
                mover(out + s * L.strip_bytes, b, j, const_cast<uint8_t*>(row + b * mover.bytes), true);
        }
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
