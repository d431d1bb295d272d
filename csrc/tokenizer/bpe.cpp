// bpe.cpp: byte-level BPE (GPT-2 style) as llama.cpp's llm_tokenizer_bpe does it.
//
// Pieces and merge rules are stored in GPT-2's byte characters; they are indexed here by the raw
// bytes those characters stand for, so a word is merged as its own bytes: one symbol per byte,
// then adjacent symbols joined by merge rank (lowest first, ties: leftmost). A symbol that is no
// piece falls back to its bytes 0x21..0x7E as one-byte pieces (the only bytes llama.cpp's
// fallback can name). Pieces or rules holding a character outside the byte table never match.
#include "common.h"
#include "tokenizer/merge.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace lowbit::tokenizer {
namespace {
// GPT-2 characters -> raw bytes; false when a character is outside the table.
bool gpt2_raw(std::string_view chars, std::string& out) {
    out.clear();
    const DecodedText d = decode_utf8(chars);
    for (uint32_t cpt : d.cpts) {
        const int b = gpt2_byte_of_char(cpt);
        if (b < 0) return false;
        out.push_back(char(b));
    }
    return true;
}
}  // namespace

void Tokenizer::init_bpe() {
    const size_t n = vocab_.tokens.size();
    raw_.assign(n, std::string());
    lookup_.reserve(n);
    std::string raw;
    for (size_t id = 0; id < n; ++id) {
        if (!gpt2_raw(vocab_.tokens[id], raw) || raw.empty()) continue;
        raw_[id] = raw;
        lookup_.emplace(raw_[id], int32_t(id));
    }
    // "left right": split at the first space after the first character (so "Ġ Ġ" works)
    merge_sides_.resize(vocab_.merges.size());
    ranks_.reserve(vocab_.merges.size());
    std::string left, right;
    for (size_t rank = 0; rank < vocab_.merges.size(); ++rank) {
        const std::string_view line = vocab_.merges[rank];
        const DecodedText d = decode_utf8(line);
        if (d.cpts.size() < 2) continue;
        const size_t cut = line.find(' ', d.offsets[1]);
        if (cut == std::string_view::npos) continue;
        if (!gpt2_raw(line.substr(0, cut), left) || !gpt2_raw(line.substr(cut + 1), right)) continue;
        if (left.empty() || right.empty()) continue;
        merge_sides_[rank] = {left, right};
        ranks_.emplace(std::make_pair(std::string_view(merge_sides_[rank].first),
                                      std::string_view(merge_sides_[rank].second)), int32_t(rank));   // first wins
    }
}

void Tokenizer::bpe_fragment(std::string_view text, std::vector<int32_t>& out) const {
    const DecodedText d = decode_utf8(text);
    for (const Span& s : pre_->split(d.cpts))
        bpe_word(text.substr(d.offsets[s.first], d.offsets[s.second] - d.offsets[s.first]), out);
}

void Tokenizer::bpe_word(std::string_view word, std::vector<int32_t>& out) const {
    if (pre_->ignore_merges) {
        auto it = lookup_.find(word);
        if (it != lookup_.end()) { out.push_back(it->second); return; }
    }
    cached(word, out, &Tokenizer::bpe_merge);
}

void Tokenizer::bpe_merge(std::string_view word, std::vector<int32_t>& out) const {
    const int32_t n = int32_t(word.size());
    std::vector<MergeSymbol> syms = chain_symbols(std::vector<uint32_t>(word.size(), 1));   // one per byte
    merge_symbols(syms, [&](const MergeSymbol& a, const MergeSymbol& b) -> std::optional<double> {
        auto it = ranks_.find({word.substr(a.first, a.size), word.substr(b.first, b.size)});
        if (it == ranks_.end()) return std::nullopt;
        return -double(it->second);   // lowest rank first
    });
    for (int32_t i = n ? 0 : -1; i != -1; i = syms[size_t(i)].next) {
        const std::string_view sym = word.substr(syms[size_t(i)].first, syms[size_t(i)].size);
        auto it = lookup_.find(sym);
        if (it != lookup_.end()) { out.push_back(it->second); continue; }
        for (size_t k = 0; k < sym.size(); ++k) {
            const uint8_t byte = uint8_t(sym[k]);
            if (byte < 0x21 || byte > 0x7E) continue;
            auto one = lookup_.find(sym.substr(k, 1));
            if (one != lookup_.end()) out.push_back(one->second);
        }
    }
}

}  // namespace lowbit::tokenizer
