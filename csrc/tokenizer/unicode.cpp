// unicode.cpp: lenient UTF-8 decoding and the class lookup (binary search over the ranges).
#include "tokenizer/unicode.h"

#include <algorithm>
#include <array>
#include <string>

namespace lowbit::tokenizer {

DecodedText decode_utf8(std::string_view text) {
    DecodedText out;
    out.cpts.reserve(text.size());
    out.offsets.reserve(text.size() + 1);
    const auto* s = reinterpret_cast<const uint8_t*>(text.data());
    const size_t n = text.size();
    size_t i = 0;
    while (i < n) {
        const uint8_t b = s[i];
        size_t len = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
        uint32_t cpt = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
        bool ok = len != 0 && i + len <= n;
        for (size_t k = 1; ok && k < len; ++k) {
            ok = (s[i + k] & 0xC0) == 0x80;
            cpt = (cpt << 6) | (s[i + k] & 0x3F);
        }
        // overlong forms and values past U+10FFFF are invalid (surrogates are kept on purpose)
        if (ok && ((len == 2 && cpt < 0x80) || (len == 3 && cpt < 0x800) || (len == 4 && (cpt < 0x10000 || cpt > 0x10FFFF))))
            ok = false;
        if (!ok) {
            cpt = kInvalidByte + b;
            len = 1;
        }
        out.cpts.push_back(cpt);
        out.offsets.push_back(uint32_t(i));
        i += len;
    }
    out.offsets.push_back(uint32_t(n));
    return out;
}

uint8_t cpt_flags(uint32_t cpt) {
    if (cpt >= 0x110000) return 0;
    if (cpt < 0x80) {                        // ASCII: one table lookup, built once
        static const auto ascii = [] {
            std::array<uint8_t, 0x80> t{};
            int r = 0;
            for (uint32_t c = 0; c < 0x80; ++c) {
                while (r + 1 < kUnicodeRangeCount && kUnicodeRanges[r + 1].first <= c) ++r;
                t[c] = kUnicodeRanges[r].flags;
            }
            return t;
        }();
        return ascii[cpt];
    }
    const UnicodeRange* end = kUnicodeRanges + kUnicodeRangeCount;
    const UnicodeRange* it = std::upper_bound(kUnicodeRanges, end, cpt,
                                              [](uint32_t c, const UnicodeRange& r) { return c < r.first; });
    return (it - 1)->flags;
}

void append_utf8(std::string& out, uint32_t cpt) {
    if (cpt >= kInvalidByte) {
        out.push_back(char(cpt - kInvalidByte));
    } else if (cpt < 0x80) {
        out.push_back(char(cpt));
    } else if (cpt < 0x800) {
        out.push_back(char(0xC0 | (cpt >> 6)));
        out.push_back(char(0x80 | (cpt & 0x3F)));
    } else if (cpt < 0x10000) {
        out.push_back(char(0xE0 | (cpt >> 12)));
        out.push_back(char(0x80 | ((cpt >> 6) & 0x3F)));
        out.push_back(char(0x80 | (cpt & 0x3F)));
    } else {
        out.push_back(char(0xF0 | (cpt >> 18)));
        out.push_back(char(0x80 | ((cpt >> 12) & 0x3F)));
        out.push_back(char(0x80 | ((cpt >> 6) & 0x3F)));
        out.push_back(char(0x80 | (cpt & 0x3F)));
    }
}

}  // namespace lowbit::tokenizer
