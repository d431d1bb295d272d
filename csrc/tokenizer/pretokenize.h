// pretokenize.h: BPE pre-tokenizers per `tokenizer.ggml.pre` label, splitting text as llama.cpp.
//
// A pre-tokenizer is a list of steps; each cuts every chunk the previous one left. Two kinds:
//  * regex matchers written by hand as state machines over code points, equal to the regexes
//    (first alternative that matches wins, as a backtracking engine picks):
//      GPT-2   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//      Llama-3 '[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\r\n\p{L}\p{N}]?\p{L}+|
//              \p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//      Qwen2   the same with \p{N} (one digit per chunk)
//      Qwen3.5 Qwen2 with marks as letters: [^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+ and ?[^\s\p{L}\p{M}\p{N}]+
//      GPT-4o  (o200k, as llama.cpp adapts it) [^\r\n\p{L}\p{N}]?U*W+C?|[^\r\n\p{L}\p{N}]?U+W*C?|
//              \p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+ where U = a letter but
//              a-z, W = a letter but A-Z, C = the Llama-3 contractions
//    a position no alternative matches becomes a one-code-point chunk (llama.cpp's custom splits).
//  * class steps (llama.cpp's std::regex path over its collapsed text): the matches of a
//    character class - maximal runs, or windows of exactly `count` - become chunks, and the
//    text between two matches stays one chunk. The collapse makes \p{P} in those patterns the
//    Unicode punctuation above U+007F plus llama.cpp's ASCII list (all ASCII punctuation and
//    symbols but '`'), and \p{N} the Unicode numbers.
// \s is Unicode White_Space; the matchers look past a chunk's end as if the text ended there.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lowbit::tokenizer {

enum class SplitKind : uint8_t { Gpt2, Llama3, Qwen2, Qwen35, Gpt4o, ClassRuns, ClassWindows };
enum class CharClass : uint8_t { None, Number, Digit, DefaultPunct };

struct SplitStep {
    SplitKind kind;
    CharClass cls = CharClass::None;   // class steps only
    int count = 0;                     // ClassWindows: exact match length
};

using Span = std::pair<uint32_t, uint32_t>;   // [first, last) code point indices

struct PreTokenizer {
    std::string name;
    std::vector<SplitStep> steps;
    bool clean_spaces = true;     // detokenize tidies " ." " 's" etc. (clean_up_tokenization_spaces)
    bool ignore_merges = false;   // a word already in the vocabulary is one token
    bool add_bos = false;         // default when tokenizer.ggml.add_bos_token is absent

    // Chunks of `cpts` (code points; classes looked up once) as code point spans, in order.
    std::vector<Span> split(const std::vector<uint32_t>& cpts) const;
};

// The pre-tokenizer for a label, nullptr for an unknown one; every known label (sorted).
const PreTokenizer* find_pre_tokenizer(std::string_view label);
std::vector<std::string> pre_tokenizer_labels();

}  // namespace lowbit::tokenizer
