// spm.cpp: SentencePiece-style (SPM) merging as llama.cpp's llm_tokenizer_spm does it.
//
// Start from one symbol per UTF-8 character of the escaped text; repeatedly merge the adjacent
// pair whose joined text is a vocabulary piece with the highest score (ties: the leftmost pair);
// symbols that end up as no piece are emitted byte by byte as <0xXX> tokens (else the one-byte
// piece, else the unknown token). A symbol is always a contiguous byte range of the text, so
// lookups are string_views into it (no string is built per merge).
#include "common.h"
#include "tokenizer/merge.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace lowbit::tokenizer {

void Tokenizer::init_spm() {
    for (const std::string& piece : vocab_.tokens) {
        if (piece.find("\xE2\x96\x81", 1) == std::string::npos) continue;   // no U+2581 after the start
        const DecodedText d = decode_utf8(piece);
        for (size_t i = 1; i < d.cpts.size(); ++i)
            if (d.cpts[i] == 0x2581) spm_joiners_.insert(d.cpts[i - 1]);
    }
    byte_ids_.assign(256, -1);
    static const char* hex = "0123456789ABCDEF";
    for (int b = 0; b < 256; ++b) {
        const std::string name = std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
        auto it = text_ids_.find(name);
        if (it == text_ids_.end() && b < 128) it = text_ids_.find(std::string(1, char(b)));
        if (it != text_ids_.end()) byte_ids_[size_t(b)] = it->second;
    }
}

// A merge only ever forms a vocabulary piece, so it never crosses a U+2581 whose left neighbour
// precedes U+2581 inside no piece: the text is cut there and each piece merged (and cached) on
// its own, with the ids of merging the whole text at once.
void Tokenizer::spm_pieces(std::string_view text, std::vector<int32_t>& out) const {
    const DecodedText d = decode_utf8(text);
    size_t start = 0;
    for (size_t i = 1; i <= d.cpts.size(); ++i) {
        if (i < d.cpts.size() && !(d.cpts[i] == 0x2581 && !spm_joiners_.count(d.cpts[i - 1]))) continue;
        cached(text.substr(d.offsets[start], d.offsets[i] - d.offsets[start]), out, &Tokenizer::spm_merge);
        start = i;
    }
}

void Tokenizer::spm_merge(std::string_view text, std::vector<int32_t>& out) const {
    const DecodedText d = decode_utf8(text);
    const size_t n = d.cpts.size();
    if (n == 0) return;
    std::vector<uint32_t> sizes(n);                 // one symbol per code point
    for (size_t i = 0; i < n; ++i) sizes[i] = d.offsets[i + 1] - d.offsets[i];
    std::vector<MergeSymbol> syms = chain_symbols(sizes);
    merge_symbols(syms, [&](const MergeSymbol& a, const MergeSymbol& b) -> std::optional<double> {
        auto it = text_ids_.find(text.substr(a.first, a.size + b.size));   // adjacent: one span
        if (it == text_ids_.end()) return std::nullopt;
        return double(vocab_.scores[size_t(it->second)]);   // best score first
    });
    for (int32_t i = 0; i != -1; i = syms[size_t(i)].next) {
        const std::string_view piece = text.substr(syms[size_t(i)].first, syms[size_t(i)].size);
        auto it = text_ids_.find(piece);
        if (it != text_ids_.end()) { out.push_back(it->second); continue; }
        for (char ch : piece) {
            const uint8_t byte = uint8_t(ch);
            int32_t id = byte_ids_[byte];
            if (id == -1) {
                // llama.cpp aborts here (no byte token); the unknown token is the SPM convention
                LOWBIT_CHECK(vocab_.unk != -1, ValueError, "cannot encode byte 0x", "0123456789ABCDEF"[byte >> 4],
                             "0123456789ABCDEF"[byte & 15], ": the vocabulary has neither a <0x",
                             "0123456789ABCDEF"[byte >> 4], "0123456789ABCDEF"[byte & 15],
                             "> token nor an unknown token");
                id = vocab_.unk;
            }
            out.push_back(id);
        }
    }
}

}  // namespace lowbit::tokenizer
