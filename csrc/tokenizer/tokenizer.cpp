// tokenizer.cpp: vocabulary indexes, the special-token partition, encode and decode (rules in
// tokenizer.h). SPM lives in spm.cpp, BPE in bpe.cpp.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <bitset>
#include <memory>

#include "common.h"
#include "tokenizer/unicode.h"

namespace lowbit::tokenizer {
namespace {
constexpr std::string_view kEscapedSpace = "\xE2\x96\x81";   // U+2581 '▁'
constexpr uint32_t kLeadOneByte = 0x10000;

bool c_isspace(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

uint32_t lead_of(std::string_view s) {
    return s.size() >= 2 ? (uint32_t(uint8_t(s[0])) << 8) | uint8_t(s[1]) : kLeadOneByte | uint8_t(s[0]);
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0;;) {
        const size_t j = s.find(from, i);
        out.append(s.substr(i, j == std::string_view::npos ? s.size() - i : j - i));
        if (j == std::string_view::npos) return out;
        out.append(to);
        i = j + from.size();
    }
}

int hex_digit(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

// llama.cpp's three in-place passes for clean_up_tokenization_spaces (kept index for index,
// since each pass reads bytes it may already have rewritten).
void clean_up_spaces(std::string& buf) {
    size_t n = buf.size(), total = n ? 1 : 0;
    for (size_t i = 1; i < n; ++i) {            // " ?" " !" " ." " ," lose the space
        const char x = buf[i];
        if (buf[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) --total;
        buf[total++] = x;
    }
    n = total;
    total = n ? 1 : 0;
    for (size_t i = 1; i < n; ++i) {            // a lone apostrophe between spaces loses both
        const char x = buf[i];
        if (x == '\'' && i + 1 < n && buf[i - 1] == ' ' && buf[i + 1] == ' ') {
            --total;
            buf[++i] = 0;
        }
        buf[total++] = x;
    }
    n = total;
    total = n ? 1 : 0;
    for (size_t i = 1; i < n; ++i) {            // " 's" " 'm" " 're" " 've" lose the space
        const char x = buf[i];
        if (buf[i - 1] == ' ' && x == '\'' && i + 1 < n) {
            const char x1 = buf[i + 1];
            if (x1 == 's' || x1 == 'm') {
                --total;
            } else if (x1 != 't' && x1 != 'd' && i + 2 < n) {
                const char x2 = buf[i + 2];
                if ((x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e')) --total;
            }
        }
        buf[total++] = x;
    }
    buf.resize(total);
}
}  // namespace

uint32_t gpt2_char_of_byte(uint8_t b) {
    static const auto table = [] {
        std::array<uint32_t, 256> t{};
        uint32_t extra = 0;
        for (int c = 0; c < 256; ++c) {
            const bool keep = (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
            t[size_t(c)] = keep ? uint32_t(c) : 256 + extra++;
        }
        return t;
    }();
    return table[b];
}

int gpt2_byte_of_char(uint32_t cpt) {
    static const auto table = [] {
        std::array<int16_t, 512> t;
        t.fill(-1);
        for (int b = 0; b < 256; ++b) t[gpt2_char_of_byte(uint8_t(b))] = int16_t(b);
        return t;
    }();
    return cpt < 512 ? table[cpt] : -1;
}

Tokenizer::Tokenizer(VocabData vocab) : vocab_(std::move(vocab)) {
    const size_t n = vocab_.tokens.size();
    text_ids_.reserve(n);
    for (size_t id = 0; id < n; ++id) text_ids_.emplace(vocab_.tokens[id], int32_t(id));   // first wins
    LOWBIT_CHECK(vocab_.scores.size() >= n && vocab_.attrs.size() >= n, ModelError,
                 "vocabulary arrays are shorter than its ", n, " tokens");
    if (vocab_.model == "gpt2") {
        pre_ = find_pre_tokenizer(vocab_.pre);
        LOWBIT_CHECK(pre_ != nullptr, ModelError, "unsupported BPE pre-tokenizer '", vocab_.pre, "'");
        clean_spaces_ = pre_->clean_spaces;
        init_bpe();
    } else {
        LOWBIT_CHECK(vocab_.model == "llama", ModelError, "unsupported tokenizer model '", vocab_.model,
                     "'; supported: llama, gpt2");
        init_spm();
    }
    for (size_t id = 0; id < n; ++id)
        if (vocab_.attrs[id] & (kAttrControl | kAttrUserDefined | kAttrUnknown)) specials_.push_back(int32_t(id));
    // llama.cpp's std::sort leaves equal lengths in unspecified order; ids ascending here
    std::stable_sort(specials_.begin(), specials_.end(), [this](int32_t a, int32_t b) {
        return vocab_.tokens[size_t(a)].size() > vocab_.tokens[size_t(b)].size();
    });
    for (int32_t id : specials_) special_lead_.push_back(lead_of(vocab_.tokens[size_t(id)]));
    pieces_.reserve(n);
    for (size_t id = 0; id < n; ++id) pieces_.push_back(render(int32_t(id)));
}

void Tokenizer::cached(std::string_view key, std::vector<int32_t>& out, MergeFn merge) const {
    constexpr size_t kCacheLimit = 200000;
    {
        std::lock_guard<std::mutex> lock(cache_mu_);
        auto it = cache_.find(std::string(key));
        if (it != cache_.end()) {
            out.insert(out.end(), it->second.begin(), it->second.end());
            return;
        }
    }
    std::vector<int32_t> ids;
    (this->*merge)(key, ids);
    out.insert(out.end(), ids.begin(), ids.end());
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() >= kCacheLimit) cache_.clear();
    cache_.emplace(std::string(key), std::move(ids));
}

int32_t Tokenizer::token_id(std::string_view piece) const {
    auto it = text_ids_.find(piece);
    return it == text_ids_.end() ? -1 : it->second;
}

// ---- special-token partition ------------------------------------------------------------------

std::vector<Tokenizer::Fragment> Tokenizer::partition(std::string_view text, bool parse_special,
                                                      const std::vector<std::pair<size_t, size_t>>& literal) const {
    std::vector<Fragment> frags{{-1, 0, text.size()}};
    if (text.empty()) return {};
    // which first bytes / byte pairs occur, so absent specials cost no search
    auto seen = std::make_unique<std::bitset<0x10100>>();
    for (size_t i = 0; i < text.size(); ++i) {
        seen->set(kLeadOneByte | uint8_t(text[i]));
        if (i + 1 < text.size()) seen->set((uint32_t(uint8_t(text[i])) << 8) | uint8_t(text[i + 1]));
    }
    const uint32_t skip = parse_special ? 0 : (kAttrControl | kAttrUnknown);
    for (size_t k = 0; k < specials_.size(); ++k) {
        const int32_t id = specials_[k];
        const uint32_t attr = vocab_.attrs[size_t(id)];
        if ((attr & skip) || !seen->test(special_lead_[k])) continue;
        if (text.find(vocab_.tokens[size_t(id)]) == std::string_view::npos) continue;
        // user-defined tokens are parsed everywhere, as without parse_special
        const bool literal_applies = !literal.empty() && (attr & (kAttrControl | kAttrUnknown));
        cut(text, id, literal_applies ? &literal : nullptr, frags);
    }
    return frags;
}

void Tokenizer::cut(std::string_view text, int32_t id, const std::vector<std::pair<size_t, size_t>>* literal,
                    std::vector<Fragment>& frags) const {
    const std::string_view tok = vocab_.tokens[size_t(id)];
    const uint32_t attr = vocab_.attrs[size_t(id)];
    auto overlaps_literal = [&](size_t a, size_t b) {   // spans are merged and sorted
        auto it = std::upper_bound(literal->begin(), literal->end(), std::make_pair(b - 1, SIZE_MAX));
        return it != literal->begin() && std::prev(it)->second > a;
    };
    auto find = [&](size_t from, size_t stop) {
        size_t pos = text.substr(0, stop).find(tok, from);
        while (pos != std::string_view::npos && literal && overlaps_literal(pos, pos + tok.size()))
            pos = text.substr(0, stop).find(tok, pos + 1);
        return pos;
    };
    std::vector<Fragment> out;
    out.reserve(frags.size() + 2);
    for (const Fragment& f : frags) {
        if (f.id >= 0) { out.push_back(f); continue; }
        size_t base = f.first;
        size_t pos = find(base, f.last);
        while (pos != std::string_view::npos) {
            size_t left_end = pos;
            if (attr & kAttrLstrip)
                while (left_end > base && c_isspace(text[left_end - 1])) --left_end;
            if (left_end > base) out.push_back({-1, base, left_end});
            out.push_back({id, 0, 0});
            base = pos + tok.size();
            if (attr & kAttrRstrip)
                while (base < f.last && c_isspace(text[base])) ++base;
            pos = base < f.last ? find(base, f.last) : std::string_view::npos;
        }
        if (base < f.last) out.push_back({-1, base, f.last});
    }
    frags.swap(out);
}

// ---- encode -------------------------------------------------------------------------------------

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special,
                                       const std::vector<std::pair<int64_t, int64_t>>& literal_spans) const {
    std::vector<std::pair<size_t, size_t>> literal;        // byte ranges, sorted and merged
    if (!literal_spans.empty()) {
        const DecodedText d = decode_utf8(text);
        const int64_t n_cpts = int64_t(d.cpts.size());
        std::vector<std::pair<int64_t, int64_t>> spans = literal_spans;
        std::sort(spans.begin(), spans.end());
        for (const auto& [a, b] : spans) {
            LOWBIT_CHECK(0 <= a && a <= b && b <= n_cpts, ValueError, "literal span (", a, ", ", b,
                         ") is outside the text (0..", n_cpts, ")");
            const size_t first = d.offsets[size_t(a)], last = d.offsets[size_t(b)];
            if (!literal.empty() && first <= literal.back().second)
                literal.back().second = std::max(literal.back().second, last);
            else if (first < last)
                literal.push_back({first, last});
        }
    }
    std::vector<int32_t> out;
    const std::vector<Fragment> frags = partition(text, parse_special, literal);
    if (pre_ == nullptr) {
        encode_spm(text, frags, out);
    } else {
        for (const Fragment& f : frags) {
            if (f.id >= 0) out.push_back(f.id);
            else bpe_fragment(text.substr(f.first, f.last - f.first), out);
        }
    }
    if (add_special && vocab_.add_bos && !(!out.empty() && out[0] == vocab_.bos)) out.insert(out.begin(), vocab_.bos);
    if (add_special && vocab_.add_eos) out.push_back(vocab_.eos);
    return out;
}

void Tokenizer::encode_spm(std::string_view text, const std::vector<Fragment>& frags, std::vector<int32_t>& out) const {
    bool prev_special = true;           // the first fragment gets the space prefix too
    for (const Fragment& f : frags) {
        if (f.id >= 0) {
            out.push_back(f.id);
            prev_special = true;
            continue;
        }
        std::string raw;
        if (vocab_.add_space_prefix && prev_special) raw.push_back(' ');
        raw.append(text.substr(f.first, f.last - f.first));
        spm_pieces(replace_all(raw, " ", kEscapedSpace), out);
        prev_special = false;
    }
}

// ---- decode -------------------------------------------------------------------------------------

std::string Tokenizer::render(int32_t id) const {
    const std::string& text = vocab_.tokens[size_t(id)];
    const uint32_t attr = vocab_.attrs[size_t(id)];
    if (attr & (kAttrControl | kAttrUnknown | kAttrUserDefined)) return text;
    if (attr & kAttrNormal) {
        if (pre_ == nullptr) return replace_all(text, kEscapedSpace, " ");
        std::string out;
        const DecodedText d = decode_utf8(text);
        for (size_t i = 0; i < d.cpts.size(); ++i) {
            const int b = gpt2_byte_of_char(d.cpts[i]);
            if (b >= 0) { out.push_back(char(b)); continue; }
            // as llama.cpp prints a character outside the byte table
            static const char* hex = "0123456789abcdef";
            out += "[UNK_BYTE_0x";
            for (uint32_t k = d.offsets[i]; k < d.offsets[i + 1]; ++k) {
                out.push_back(hex[uint8_t(text[k]) >> 4]);
                out.push_back(hex[uint8_t(text[k]) & 15]);
            }
            out += text + "]";
        }
        return out;
    }
    if (attr & kAttrByte) {        // "<0xXX>"
        if (text.size() >= 5 && hex_digit(text[3]) >= 0 && hex_digit(text[4]) >= 0)
            return std::string(1, char(hex_digit(text[3]) * 16 + hex_digit(text[4])));
        return "";
    }
    return "";                     // unused / undefined tokens render as nothing
}

std::string_view Tokenizer::token_to_bytes(int32_t id, bool special) const {
    LOWBIT_CHECK(id >= 0 && size_t(id) < pieces_.size(), ValueError, "token id ", id,
                 " is out of range for a vocabulary of ", pieces_.size());
    if (!special && (vocab_.attrs[size_t(id)] & (kAttrControl | kAttrUnknown))) return {};
    return pieces_[size_t(id)];
}

std::string Tokenizer::detokenize(const int32_t* ids, size_t n, bool special) const {
    std::string out;
    for (size_t i = 0; i < n; ++i) {
        std::string_view piece = token_to_bytes(ids[i], special);
        if (i == 0 && vocab_.add_space_prefix && !piece.empty() && piece[0] == ' ') piece.remove_prefix(1);
        out.append(piece);
    }
    if (clean_spaces_) clean_up_spaces(out);
    return out;
}

}  // namespace lowbit::tokenizer
