// repack.cpp: PackedLayout (kernels.h): the byte permutation between GGML rows of the legacy
// 32-blocks and packed strips, both ways. ISA-independent; the packed strip GEMM that reads the
// result is in packed_avx512.cpp.
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
    return shape_of(type, s);
}

PackedLayout::PackedLayout(GGMLType type, int64_t n) {
    const Shape s = checked_shape(type);
    LOWBIT_CHECK(n > 0 && n % 32 == 0, ValueError, "packed rows need a positive multiple of 32 columns, got ", n);
    nb = n / 32;
    qs = 0;
    qh = round64(nb * s.qs_bytes * kStripRows);
    d = qh + (s.qh ? nb * 64 : 0);
    m = round64(d + nb * 2 * kStripRows);
    strip_bytes = round64(s.min ? m + nb * 2 * kStripRows : m);
}

void pack_rows(GGMLType type, int64_t rows, int64_t cols, const void* src, size_t row_bytes, void* dst) {
    const PackedLayout L(type, cols);
    const BlockFields f = fields_of(type);
    const int64_t n_strips = (rows + kStripRows - 1) / kStripRows;
    auto* out = static_cast<uint8_t*>(dst);
    std::memset(out, 0, size_t(n_strips * L.strip_bytes));
    for (int64_t s = 0; s < n_strips; ++s)
        for (int j = 0; j < kStripRows && s * kStripRows + j < rows; ++j) {
            const auto* row = static_cast<const uint8_t*>(src) + size_t(s * kStripRows + j) * row_bytes;
            for (int64_t b = 0; b < L.nb; ++b)
                move_block(type, L, out + s * L.strip_bytes, b, j, const_cast<uint8_t*>(row + b * f.bytes), true);
        }
}

void unpack_strip(GGMLType type, int64_t cols, const void* packed, int64_t s, int nrows, void* dst, size_t row_bytes) {
    const PackedLayout L(type, cols);
    const BlockFields f = fields_of(type);
    auto* strip = const_cast<uint8_t*>(static_cast<const uint8_t*>(packed)) + s * L.strip_bytes;   // read only
    for (int j = 0; j < nrows; ++j) {
        auto* row = static_cast<uint8_t*>(dst) + size_t(j) * row_bytes;
        for (int64_t b = 0; b < L.nb; ++b) move_block(type, L, strip, b, j, row + b * f.bytes, false);
    }
}

void unpack_row(GGMLType type, int64_t cols, const void* packed, int64_t r, void* dst) {
    const PackedLayout L(type, cols);
    const BlockFields f = fields_of(type);
    auto* strip = const_cast<uint8_t*>(static_cast<const uint8_t*>(packed)) + r / kStripRows * L.strip_bytes;   // read only
    for (int64_t b = 0; b < L.nb; ++b)
        move_block(type, L, strip, b, int(r % kStripRows), static_cast<uint8_t*>(dst) + b * f.bytes, false);
}

}  // namespace lowbit::cpu
