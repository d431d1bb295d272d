// tokenizer.h: exact llama.cpp tokenization and detokenization: SPM ('llama') and byte-level
// BPE ('gpt2') over a loaded vocabulary (one implementation; lowbit.runtime.tokenizer wraps it).
//
// encode(): special tokens are cut out of the text first (llama.cpp's tokenizer_st_partition:
// longest token text first, ties by id; control and unknown tokens only with parse_special and
// never inside a literal span, user-defined tokens always; lstrip/rstrip attributes eat C
// isspace() bytes), then each remaining fragment goes through SPM (space prefix after a special
// or at the start, ' ' -> U+2581, best-score merges, leftmost on ties, byte fallback <0xXX>) or
// BPE (pre-tokenizer, rank-ordered merges of the word's bytes, leftmost on ties, one-byte
// fallback). add_special adds BOS (unless the text starts with it) and EOS per the vocabulary.
// detokenize(): the concatenated pieces (llama.cpp's llama_detokenize with remove_special=false),
// the first piece's leading space dropped when the vocabulary adds a space prefix, and the BPE
// space clean-up of pre-tokenizers that ask for it.
//
// Text is UTF-8 (lone surrogates as Python's "surrogatepass" bytes are code points like any
// other; other invalid bytes are single bytes of no class). A Tokenizer is immutable once
// built but for its merge cache (behind a mutex): encode/detokenize may run on many threads at once.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <mutex>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "tokenizer/pretokenize.h"

namespace lowbit::tokenizer {

// Token attribute bits (llama.h LLAMA_TOKEN_ATTR_*).
enum : uint32_t {
    kAttrUnknown = 1, kAttrUnused = 2, kAttrNormal = 4, kAttrControl = 8, kAttrUserDefined = 16,
    kAttrByte = 32, kAttrLstrip = 128, kAttrRstrip = 256,
};

// A loaded vocabulary: what the tokenizer is built from.
struct VocabData {
    std::string model;                 // "llama" (SPM) or "gpt2" (byte-level BPE)
    std::string pre;                   // BPE pre-tokenizer label
    std::vector<std::string> tokens;   // [n] piece bytes as stored in the GGUF
    std::vector<float> scores;         // [n] (SPM)
    std::vector<uint32_t> attrs;       // [n] kAttr* bits
    std::vector<std::string> merges;   // BPE "left right" lines (GPT-2 byte characters)
    int32_t bos = -1, eos = -1, unk = -1;
    bool add_bos = false, add_eos = false, add_space_prefix = false;
    // filled by load_vocab (vocab.h): every special-id slot ("bos", "eot", "fim_pre"...; -1 when
    // absent), the end-of-generation ids, the chat template and the model's name
    std::vector<std::pair<std::string, int32_t>> slots;
    std::vector<int32_t> eog_ids;
    std::optional<std::string> chat_template;
    std::string general_name;
};

class Tokenizer {
public:
    explicit Tokenizer(VocabData vocab);   // throws ModelError (unknown model / pre-tokenizer)
    Tokenizer(const Tokenizer&) = delete;  // the indexes view the vocabulary's own strings
    Tokenizer& operator=(const Tokenizer&) = delete;

    // literal_spans: [first, last) CODE POINT ranges of `text` where control tokens are text.
    std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special,
                                const std::vector<std::pair<int64_t, int64_t>>& literal_spans = {}) const;
    // The piece's bytes (llama.cpp's token_to_piece); control/unknown give "" unless special.
    std::string_view token_to_bytes(int32_t id, bool special) const;
    std::string detokenize(const int32_t* ids, size_t n, bool special) const;

    size_t n_tokens() const { return vocab_.tokens.size(); }
    int32_t token_id(std::string_view piece) const;   // -1 when no token has this text
    const VocabData& vocab() const { return vocab_; }
    const PreTokenizer* pre_tokenizer() const { return pre_; }

private:
    struct Fragment {                  // a special token (id >= 0) or the raw bytes [first, last)
        int32_t id;
        size_t first, last;
    };
    struct PairHash {
        size_t operator()(const std::pair<std::string_view, std::string_view>& p) const {
            return std::hash<std::string_view>()(p.first) * 31 + std::hash<std::string_view>()(p.second);
        }
    };
    void init_spm();
    void init_bpe();
    std::vector<Fragment> partition(std::string_view text, bool parse_special,
                                    const std::vector<std::pair<size_t, size_t>>& literal) const;
    void cut(std::string_view text, int32_t id, const std::vector<std::pair<size_t, size_t>>* literal,
             std::vector<Fragment>& frags) const;
    void encode_spm(std::string_view text, const std::vector<Fragment>& frags, std::vector<int32_t>& out) const;
    void spm_pieces(std::string_view escaped, std::vector<int32_t>& out) const;
    void spm_merge(std::string_view escaped, std::vector<int32_t>& out) const;
    // ids of a word / SPM piece from the cache, else merged and remembered
    using MergeFn = void (Tokenizer::*)(std::string_view, std::vector<int32_t>&) const;
    void cached(std::string_view key, std::vector<int32_t>& out, MergeFn merge) const;
    void bpe_merge(std::string_view word, std::vector<int32_t>& out) const;
    void bpe_fragment(std::string_view text, std::vector<int32_t>& out) const;
    void bpe_word(std::string_view word, std::vector<int32_t>& out) const;
    std::string render(int32_t id) const;

    VocabData vocab_;
    const PreTokenizer* pre_ = nullptr;            // BPE only
    std::unordered_map<std::string_view, int32_t> text_ids_; // piece bytes -> id (SPM merges look up here)
    std::unordered_map<std::string_view, int32_t> lookup_;   // BPE: raw bytes -> id
    std::vector<std::string> raw_;                 // BPE: raw bytes of each piece ("" when unmappable)
    std::vector<std::pair<std::string, std::string>> merge_sides_;   // BPE: raw bytes of each rule
    std::unordered_map<std::pair<std::string_view, std::string_view>, int32_t, PairHash> ranks_;
    std::vector<int32_t> byte_ids_;                // SPM: byte -> <0xXX> (or one-char) id, -1
    std::vector<int32_t> specials_;                // control / user-defined / unknown, longest first
    std::vector<int32_t> special_lead_;            // [specials_] first two bytes (or 1 byte + 0x10000)
    std::vector<std::string> pieces_;              // rendered piece of every id
    bool clean_spaces_ = false;
    std::unordered_set<uint32_t> spm_joiners_;     // code points that precede U+2581 inside a piece
    // Merge results per word (BPE) or per piece (SPM): text repeats its words, so most merges
    // are looked up. Bounded (cleared when full); a mutex keeps encode() thread-safe.
    mutable std::mutex cache_mu_;
    mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

// GPT-2's byte <-> character table: printable latin-1 bytes are themselves, the rest U+0100 on.
uint32_t gpt2_char_of_byte(uint8_t b);
int gpt2_byte_of_char(uint32_t cpt);   // -1 for characters outside the table

}  // namespace lowbit::tokenizer
