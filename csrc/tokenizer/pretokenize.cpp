// pretokenize.cpp: the split steps (definitions in pretokenize.h) and the label table.
#include "tokenizer/pretokenize.h"

#include <algorithm>
#include <map>

#include "tokenizer/unicode.h"

namespace lowbit::tokenizer {
namespace {

// The text under a step: code points and their classes; `end` bounds the current chunk.
struct Cursor {
    const uint32_t* cpt;
    const uint8_t* flags;
    uint32_t end;
    bool letter(uint32_t i) const { return i < end && (flags[i] & kCptLetter); }
    bool number(uint32_t i) const { return i < end && (flags[i] & kCptNumber); }
    bool space(uint32_t i) const { return i < end && (flags[i] & kCptSpace); }
    // [^\s\p{L}\p{N}]
    bool other(uint32_t i) const { return i < end && !(flags[i] & (kCptSpace | kCptLetter | kCptNumber)); }
    bool mark(uint32_t i) const { return i < end && (flags[i] & kCptMark); }
    bool upper_ok(uint32_t i) const { return letter(i) && !(cpt[i] >= 'a' && cpt[i] <= 'z'); }   // U
    bool lower_ok(uint32_t i) const { return letter(i) && !(cpt[i] >= 'A' && cpt[i] <= 'Z'); }   // W
    bool newline(uint32_t i) const { return i < end && (cpt[i] == '\r' || cpt[i] == '\n'); }
    uint32_t lower(uint32_t i) const {      // ASCII letters folded, for case-blind contractions
        const uint32_t c = i < end ? cpt[i] : 0;
        return (c >= 'A' && c <= 'Z') ? c + 32 : c;
    }
    template <typename Pred> uint32_t skip(uint32_t i, Pred pred) const {
        while (pred(i)) ++i;
        return i;
    }
};

// 's 't 're 've 'm 'll 'd at pos: the end of the match, else pos.
uint32_t contraction(const Cursor& c, uint32_t pos, bool any_case) {
    if (pos >= c.end || c.cpt[pos] != '\'') return pos;
    auto at = [&](uint32_t i) { return any_case ? c.lower(i) : (i < c.end ? c.cpt[i] : 0); };
    const uint32_t a = at(pos + 1), b = at(pos + 2);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return pos + 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return pos + 3;
    return pos;
}

// \s+(?!\S)|\s+ at a whitespace position: the run, less its last space when a non-space follows.
uint32_t spaces(const Cursor& c, uint32_t pos) {
    const uint32_t run = c.skip(pos, [&](uint32_t i) { return c.space(i); });
    return (run < c.end && run - pos > 1) ? run - 1 : run;
}

// \s*[\r\n]+|\s+(?!\S)|\s+ at pos (else one code point): up to and including the run's last
// \r or \n, else the run as spaces() takes it.
uint32_t space_alternatives(const Cursor& c, uint32_t pos) {
    if (!c.space(pos)) return pos + 1;
    const uint32_t run = c.skip(pos, [&](uint32_t i) { return c.space(i); });
    for (uint32_t i = run; i > pos; --i)
        if (c.newline(i - 1)) return i;
    return spaces(c, pos);
}

uint32_t match_gpt2(const Cursor& c, uint32_t pos) {
    if (uint32_t e = contraction(c, pos, false); e != pos) return e;
    const uint32_t j = pos + (c.cpt[pos] == ' ');                   // the optional leading ' '
    if (c.letter(j)) return c.skip(j, [&](uint32_t i) { return c.letter(i); });
    if (c.number(j)) return c.skip(j, [&](uint32_t i) { return c.number(i); });
    if (c.other(j)) return c.skip(j, [&](uint32_t i) { return c.other(i); });
    if (c.space(pos)) return spaces(c, pos);
    return pos + 1;
}

// Llama-3 / Qwen2 / Qwen3.5 (see pretokenize.h); marks_join: \p{M} counts as a letter.
uint32_t match_llama3(const Cursor& c, uint32_t pos, uint32_t max_digits, bool marks_join = false) {
    if (uint32_t e = contraction(c, pos, true); e != pos) return e;
    auto word = [&](uint32_t i) { return c.letter(i) || (marks_join && c.mark(i)); };
    auto other = [&](uint32_t i) { return c.other(i) && !(marks_join && c.mark(i)); };
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (!c.newline(pos) && !c.letter(pos) && !c.number(pos) && word(pos + 1))
        return c.skip(pos + 1, word);
    if (word(pos)) return c.skip(pos, word);
    if (c.number(pos)) {                                             // \p{N}{1,max}
        uint32_t e = pos;
        while (e - pos < max_digits && c.number(e)) ++e;
        return e;
    }
    const uint32_t j = pos + (c.cpt[pos] == ' ');                   // ' ?[^\s\p{L}\p{N}]+[\r\n]*
    if (other(j)) {
        const uint32_t e = c.skip(j, other);
        return c.skip(e, [&](uint32_t i) { return c.newline(i); });
    }
    return space_alternatives(c, pos);
}

// GPT-4o's two letter alternatives at `start`: U*W+ (backtracking U* until W+ can start), else
// U+W*; then an optional contraction. Returns start when neither matches.
uint32_t gpt4o_letters(const Cursor& c, uint32_t start) {
    auto upper = [&](uint32_t i) { return c.upper_ok(i); };
    auto lower = [&](uint32_t i) { return c.lower_ok(i); };
    const uint32_t u_end = c.skip(start, upper);
    uint32_t e = start;
    for (uint32_t k = u_end + 1; k-- > start;)
        if (lower(k)) { e = c.skip(k, lower); break; }
    if (e == start && u_end > start) e = c.skip(u_end, lower);
    if (e == start) return start;
    return contraction(c, e, true);
}

uint32_t match_gpt4o(const Cursor& c, uint32_t pos) {
    if (!c.newline(pos) && !c.letter(pos) && !c.number(pos)) {     // the optional leading character
        if (uint32_t e = gpt4o_letters(c, pos + 1); e != pos + 1) return e;
    }
    if (uint32_t e = gpt4o_letters(c, pos); e != pos) return e;
    if (c.number(pos)) {                                             // \p{N}{1,3}
        uint32_t e = pos;
        while (e - pos < 3 && c.number(e)) ++e;
        return e;
    }
    const uint32_t j = pos + (c.cpt[pos] == ' ');                   // ' ?[^\s\p{L}\p{N}]+[\r\n/]*
    if (c.other(j)) {
        const uint32_t e = c.skip(j, [&](uint32_t i) { return c.other(i); });
        return c.skip(e, [&](uint32_t i) { return c.newline(i) || (i < c.end && c.cpt[i] == '/'); });
    }
    return space_alternatives(c, pos);
}

bool in_class(CharClass cls, uint32_t cpt, uint8_t flags) {
    switch (cls) {
    case CharClass::Number:   // collapsed \p{N}: whitespace is tested first by the collapse
        return (flags & kCptNumber) && !(flags & kCptSpace);
    case CharClass::Digit:
        return cpt >= '0' && cpt <= '9';
    case CharClass::DefaultPunct:   // [\p{P}\$\+<=>\^~\|] after llama.cpp's collapse
        if (cpt < 0x80) return cpt != '`' && ((cpt >= 0x21 && cpt <= 0x2F) || (cpt >= 0x3A && cpt <= 0x40) ||
                                              (cpt >= 0x5B && cpt <= 0x5E) || cpt == '_' || (cpt >= 0x7B && cpt <= 0x7E));
        return (flags & kCptPunct) && !(flags & kCptSpace);
    case CharClass::None:
        break;
    }
    return false;
}

// Matches of a class in [first, last): maximal runs (count 0) or windows of exactly `count`;
// the text between matches stays whole.
void split_class(const SplitStep& step, const std::vector<uint32_t>& cpts, const std::vector<uint8_t>& flags,
                 Span chunk, std::vector<Span>& out) {
    auto is = [&](uint32_t i) { return in_class(step.cls, cpts[i], flags[i]); };
    uint32_t gap = chunk.first, i = chunk.first;
    while (i < chunk.second) {
        uint32_t e = i;
        while (e < chunk.second && is(e) && (step.count == 0 || e - i < uint32_t(step.count))) ++e;
        const bool match = e > i && (step.count == 0 || e - i == uint32_t(step.count));
        if (!match) { ++i; continue; }
        if (i > gap) out.push_back({gap, i});
        out.push_back({i, e});
        gap = i = e;
    }
    if (chunk.second > gap) out.push_back({gap, chunk.second});
}

std::map<std::string, PreTokenizer, std::less<>> make_table() {
    const SplitStep gpt2{SplitKind::Gpt2}, llama3{SplitKind::Llama3}, qwen2{SplitKind::Qwen2};
    const SplitStep qwen35{SplitKind::Qwen35}, gpt4o{SplitKind::Gpt4o};
    const SplitStep each_number{SplitKind::ClassWindows, CharClass::Number, 1};
    const std::vector<SplitStep> default_steps{{SplitKind::ClassRuns, CharClass::DefaultPunct}, gpt2,
                                               {SplitKind::ClassRuns, CharClass::Number},
                                               {SplitKind::ClassWindows, CharClass::Digit, 3}};
    std::map<std::string, PreTokenizer, std::less<>> table;
    auto add = [&](std::initializer_list<const char*> labels, std::vector<SplitStep> steps, bool clean = true,
                   bool ignore_merges = false, bool add_bos = false) {
        for (const char* label : labels) table[label] = PreTokenizer{label, steps, clean, ignore_merges, add_bos};
    };
    add({"default"}, default_steps);
    add({"llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"}, {llama3}, true, true, true);
    add({"gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais"}, {gpt2});
    add({"starcoder", "refact", "codeshell", "exaone", "minerva-7b"}, {each_number, gpt2});
    add({"smollm", "command-r"}, {each_number, gpt2}, false);
    add({"qwen2", "deepseek-r1-qwen"}, {qwen2}, false);
    add({"stablelm2", "megrez"}, {qwen2});
    add({"qwen35"}, {qwen35}, false);
    add({"dbrx", "smaug-bpe"}, {llama3});                  // llama3's regex, without its flags
    add({"gpt-4o", "llama4", "kanana2", "talkie"}, {gpt4o}, false);
    return table;
}

const std::map<std::string, PreTokenizer, std::less<>>& table() {
    static const auto t = make_table();
    return t;
}
}  // namespace

std::vector<Span> PreTokenizer::split(const std::vector<uint32_t>& cpts) const {
    std::vector<uint8_t> flags(cpts.size());
    for (size_t i = 0; i < cpts.size(); ++i) flags[i] = cpt_flags(cpts[i]);
    std::vector<Span> spans{{0, uint32_t(cpts.size())}}, next;
    for (const SplitStep& step : steps) {
        next.clear();
        for (const Span& chunk : spans) {
            if (step.kind == SplitKind::ClassRuns || step.kind == SplitKind::ClassWindows) {
                split_class(step, cpts, flags, chunk, next);
                continue;
            }
            const Cursor c{cpts.data(), flags.data(), chunk.second};
            for (uint32_t pos = chunk.first; pos < chunk.second;) {
                uint32_t e;
                switch (step.kind) {
                case SplitKind::Gpt2: e = match_gpt2(c, pos); break;
                case SplitKind::Llama3: e = match_llama3(c, pos, 3); break;
                case SplitKind::Qwen35: e = match_llama3(c, pos, 1, true); break;
                case SplitKind::Gpt4o: e = match_gpt4o(c, pos); break;
                default: e = match_llama3(c, pos, 1); break;
                }
                next.push_back({pos, e});
                pos = e;
            }
        }
        spans.swap(next);
    }
    if (cpts.empty()) spans.clear();
    return spans;
}

const PreTokenizer* find_pre_tokenizer(std::string_view label) {
    auto it = table().find(label);
    return it == table().end() ? nullptr : &it->second;
}

std::vector<std::string> pre_tokenizer_labels() {
    std::vector<std::string> out;
    for (const auto& kv : table()) out.push_back(kv.first);
    return out;
}

}  // namespace lowbit::tokenizer
