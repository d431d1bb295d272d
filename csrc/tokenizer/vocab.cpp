// vocab.cpp: load_vocab (llama.cpp's vocabulary rules, see vocab.h) and the GGUF front-end.
#include "tokenizer/vocab.h"

#include <algorithm>
#include <map>
#include <set>
#include <unordered_map>

#include "common.h"

namespace lowbit::tokenizer {

const std::vector<std::pair<const char*, const char*>> kIdKeys = {
    {"bos", "bos_token_id"}, {"eos", "eos_token_id"}, {"eot", "eot_token_id"}, {"eom", "eom_token_id"},
    {"unk", "unknown_token_id"}, {"sep", "seperator_token_id"}, {"pad", "padding_token_id"},
    {"mask", "mask_token_id"}, {"fim_pre", "fim_pre_token_id"}, {"fim_suf", "fim_suf_token_id"},
    {"fim_mid", "fim_mid_token_id"}, {"fim_pad", "fim_pad_token_id"}, {"fim_rep", "fim_rep_token_id"},
    {"fim_sep", "fim_sep_token_id"}, {"fim_pre", "prefix_token_id"}, {"fim_suf", "suffix_token_id"},
    {"fim_mid", "middle_token_id"},
};

namespace {
// GGUF token_type values (LLAMA_TOKEN_TYPE_*) -> attribute bits.
uint32_t attr_of_type(int64_t type) {
    switch (type) {
    case 1: return kAttrNormal;
    case 2: return kAttrUnknown;
    case 3: return kAttrControl;
    case 4: return kAttrUserDefined;
    case 5: return kAttrUnused;
    case 6: return kAttrByte;
    default: return 0;
    }
}

// Slots llama.cpp fills by token text when the metadata leaves them unset; a match also gains CONTROL.
const std::vector<std::pair<const char*, std::vector<const char*>>> kDetectByText = {
    {"eot", {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
             "_<EOT>", "[EOT]", "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>", "<end_of_utterance>"}},
    {"eom", {"<|eom_id|>"}},
    {"fim_pre", {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "begin\xEF\xBD\x9C>",
                 "<PRE>", "\xE2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>"}},
    {"fim_suf", {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81hole\xEF\xBD\x9C>",
                 "<SUF>", "\xE2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>"}},
    {"fim_mid", {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "end\xEF\xBD\x9C>",
                 "<MID>", "\xE2\x96\x81<MID>", "<|code_middle|>", "<|middle|>"}},
    {"fim_pad", {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"}},
    {"fim_rep", {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"}},
    {"fim_sep", {"<|file_sep|>"}},
};

// Token texts that end generation (llama.cpp's special_eog_ids text list).
const std::vector<const char*> kEogTexts = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>", "[e~[",
};

std::string lower(std::string s) {
    for (char& c : s) c = (c >= 'A' && c <= 'Z') ? char(c + 32) : c;
    return s;
}
bool contains(std::string_view s, std::string_view part) { return s.find(part) != std::string_view::npos; }

struct Builder {
    VocabData& v;
    std::unordered_map<std::string_view, int32_t> ids_of_text;
    std::map<std::string, int32_t> slot;   // slot name -> id

    int32_t find(std::string_view text) const {
        auto it = ids_of_text.find(text);
        return it == ids_of_text.end() ? -1 : it->second;
    }

    void detect_specials() {   // only for unset slots; the lowest matching id takes the slot
        for (const auto& [name, texts] : kDetectByText) {
            if (slot[name] != -1) continue;
            int32_t lowest = -1;
            for (const char* text : texts) {
                const int32_t id = find(text);
                if (id == -1) continue;
                v.attrs[size_t(id)] |= kAttrControl;
                lowest = lowest == -1 ? id : std::min(lowest, id);
            }
            if (lowest != -1) slot[name] = lowest;
        }
    }

    void end_of_generation() {
        std::set<int32_t> eog;
        for (const char* s : {"fim_pad", "fim_rep", "fim_sep"})
            if (slot[s] != -1) eog.insert(slot[s]);
        for (const char* text : kEogTexts) {
            const int32_t id = find(text);
            if (id != -1) { eog.insert(id); v.attrs[size_t(id)] |= kAttrControl; }
        }
        for (const char* text : {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"}) {
            const int32_t id = find(text);   // gpt-oss: always rendered
            if (id != -1) v.attrs[size_t(id)] = kAttrUserDefined;
        }
        for (const char* s : {"eos", "eot", "eom"})
            if (slot[s] != -1) eog.insert(slot[s]);
        auto in_eog = [&](const char* text) {
            for (int32_t id : eog) if (v.tokens[size_t(id)] == text) return id;
            return -1;
        };
        const int32_t end = in_eog("<|end|>");
        const bool call = in_eog("<|call|>") != -1 || in_eog("<|calls|>") != -1;
        if (end != -1 && ((in_eog("<|return|>") != -1 && call) || (call && in_eog("<|flush|>") != -1))) {
            eog.erase(end);                  // gpt-oss / solar-open: <|end|> is not the end
            v.attrs[size_t(end)] = kAttrUserDefined;
        }
        const int32_t eos_text = in_eog("</s>");
        if (in_eog("<|tool_response>") != -1 && eos_text != -1) {
            eog.erase(eos_text);             // gemma4 / paddleocr: </s> is ordinary text
            v.attrs[size_t(eos_text)] = kAttrNormal;
        }
        v.eog_ids.assign(eog.begin(), eog.end());
    }

    void strip_attrs(const VocabFields& f) {   // per-model lstrip/rstrip llama.cpp sets by name
        const std::string name = lower(f.general_name), pre = f.pre.value_or("");
        const std::string& arch = f.architecture;
        if (contains(pre, "jina-v2-de") || contains(pre, "jina-v2-es") || contains(pre, "jina-v2-code") ||
            contains(arch, "nomic-bert-moe") || contains(arch, "jina-bert-v3")) {
            if (int32_t id = find("<mask>"); id != -1) v.attrs[size_t(id)] |= kAttrLstrip;
        } else if (contains(name, "phi-3") || contains(name, "phi3")) {
            for (uint32_t& a : v.attrs)
                if (a & (kAttrControl | kAttrUserDefined | kAttrUnknown)) a |= kAttrRstrip;
            const std::pair<const char*, bool> rules[] = {{"</s>", true}, {"<unk>", false}, {"<s>", false},
                                                          {"<|endoftext|>", false}};
            for (const auto& [text, on] : rules)
                if (int32_t id = find(text); id != -1)
                    v.attrs[size_t(id)] = on ? (v.attrs[size_t(id)] | kAttrRstrip) : (v.attrs[size_t(id)] & ~kAttrRstrip);
        } else if (contains(name, "modern-bert")) {
            if (int32_t id = find("[MASK]"); id != -1) v.attrs[size_t(id)] |= kAttrLstrip;
        }
    }
};

void read_tokens(VocabFields& f, VocabData& v) {
    LOWBIT_CHECK(f.tokens.has_value(), ModelError, "GGUF metadata has no tokenizer.ggml.tokens (the vocabulary)");
    v.tokens = std::move(*f.tokens);
    LOWBIT_CHECK(!v.tokens.empty(), ModelError, "tokenizer.ggml.tokens is empty");
    for (size_t i = 0; i < v.tokens.size(); ++i)
        if (v.tokens[i].empty()) v.tokens[i] = str("[EMPTY_", i, "]");   // llama.cpp renames them the same way
    const size_t n = v.tokens.size();
    if (f.scores) {
        LOWBIT_CHECK(f.scores->size() >= n, ModelError, "tokenizer.ggml.scores has ", f.scores->size(),
                     " entries, fewer than the ", n, " tokens");
        v.scores.assign(f.scores->begin(), f.scores->begin() + std::ptrdiff_t(n));
    } else {
        v.scores.assign(n, 0.0f);
    }
    if (f.token_types) {
        LOWBIT_CHECK(f.token_types->size() >= n, ModelError, "tokenizer.ggml.token_type has ", f.token_types->size(),
                     " entries, fewer than the ", n, " tokens");
        for (size_t i = 0; i < n; ++i) v.attrs.push_back(attr_of_type((*f.token_types)[i]));
    } else {
        v.attrs.assign(n, kAttrNormal);
    }
}
}  // namespace

VocabData load_vocab(VocabFields f, std::vector<std::string>& warnings) {
    LOWBIT_CHECK(f.model.has_value(), ModelError,
                 "GGUF metadata has no tokenizer.ggml.model; supported tokenizer models: llama, gpt2");
    LOWBIT_CHECK(*f.model == "llama" || *f.model == "gpt2", ModelError, "unsupported tokenizer model '",
                 printable(*f.model), "'; supported: llama, gpt2");
    VocabData v;
    v.model = *f.model;
    read_tokens(f, v);
    const size_t n = v.tokens.size();
    Builder b{v, {}, {}};
    b.ids_of_text.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        auto [it, fresh] = b.ids_of_text.emplace(v.tokens[i], int32_t(i));
        LOWBIT_CHECK(fresh, ModelError, "duplicate token in vocabulary: '", printable(v.tokens[i]), "' has ids ",
                     it->second, " and ", i);
    }
    std::string pre = f.pre.value_or("");
    bool add_space_prefix = false, add_bos = false;
    if (v.model == "llama") {
        add_space_prefix = add_bos = true;
    } else {
        LOWBIT_CHECK(f.merges.has_value(), ModelError,
                     "BPE tokenizer (tokenizer.ggml.model = 'gpt2') has no tokenizer.ggml.merges");
        v.merges = std::move(*f.merges);
        if (pre.empty()) {
            warnings.push_back("GGUF has no tokenizer.ggml.pre; using the 'default' pre-tokenizer as llama.cpp does");
            pre = "default";
        }
        const PreTokenizer* p = find_pre_tokenizer(pre);
        if (p == nullptr) {
            std::string known;
            for (const std::string& label : pre_tokenizer_labels()) known += (known.empty() ? "" : ", ") + label;
            throw ModelError(str("unsupported BPE pre-tokenizer '", printable(pre), "'; supported: ", known));
        }
        add_bos = p->add_bos;
        v.pre = pre;
    }
    v.add_space_prefix = f.add_space_prefix.value_or(add_space_prefix);

    // special ids: per-model defaults (disabled when outside the vocabulary), then the keys
    for (const auto& [name, key] : kIdKeys) b.slot[name] = -1;
    if (v.model == "llama") b.slot["bos"] = 1, b.slot["eos"] = 2, b.slot["unk"] = 0;
    else b.slot["bos"] = 11, b.slot["eos"] = 11;
    for (auto& [name, id] : b.slot)
        if (id >= int32_t(n)) id = -1;
    for (const auto& [name, key] : kIdKeys) {
        auto it = std::find_if(f.id_keys.begin(), f.id_keys.end(), [&](const auto& kv) { return kv.first == key; });
        if (it == f.id_keys.end()) continue;
        if (it->second >= 0 && uint64_t(it->second) < n) b.slot[name] = int32_t(it->second);
        else warnings.push_back(str("tokenizer.ggml.", key, " = ", it->second, " is outside the vocabulary of ", n,
                                    "; keeping ", b.slot[name]));
    }
    v.add_bos = f.add_bos.value_or(add_bos);
    v.add_eos = f.add_eos.value_or(false);
    LOWBIT_CHECK(!v.add_bos || b.slot["bos"] != -1, ModelError,
                 "tokenizer.ggml.add_bos_token is true but there is no bos token id");
    LOWBIT_CHECK(!v.add_eos || b.slot["eos"] != -1, ModelError,
                 "tokenizer.ggml.add_eos_token is true but there is no eos token id");
    b.detect_specials();
    for (size_t id = 0; id < n; ++id)
        if ((v.attrs[id] & kAttrControl) && contains(v.tokens[id], "unused")) v.attrs[id] |= kAttrUnused;
    b.end_of_generation();
    b.strip_attrs(f);
    v.bos = b.slot["bos"], v.eos = b.slot["eos"], v.unk = b.slot["unk"];
    for (const auto& [name, key] : kIdKeys)
        if (std::none_of(v.slots.begin(), v.slots.end(), [&](const auto& s) { return s.first == name; }))
            v.slots.push_back({name, b.slot[name]});
    v.chat_template = f.chat_template;
    v.general_name = f.general_name;
    return v;
}

// ---- the GGUF front-end ---------------------------------------------------------------------

namespace {
[[noreturn]] void wrong_type(std::string_view key, const char* want, const GGUFValue& value) {
    throw ModelError(str(key, " must be ", want, ", got ", gguf_type_label(value)));
}

std::optional<std::string> string_of(const GGUFFile& file, std::string_view key) {
    const GGUFEntry* e = file.find(key);
    if (!e) return std::nullopt;
    if (e->value.type != GGUFType::STRING) wrong_type(key, "a string", e->value);
    return std::string(std::get<std::string_view>(e->value.data));
}

std::optional<bool> flag_of(const GGUFFile& file, std::string_view key) {
    const GGUFEntry* e = file.find(key);
    if (!e) return std::nullopt;
    if (e->value.type == GGUFType::BOOL) return std::get<bool>(e->value.data);
    if (gguf_is_integer(e->value.type))
        return std::holds_alternative<uint64_t>(e->value.data) ? std::get<uint64_t>(e->value.data) != 0
                                                               : std::get<int64_t>(e->value.data) != 0;
    wrong_type(key, "a boolean", e->value);
}

const GGUFArray* array_of(const GGUFFile& file, std::string_view key, const char* want, bool (*ok)(GGUFType)) {
    const GGUFEntry* e = file.find(key);
    if (!e) return nullptr;
    if (e->value.type != GGUFType::ARRAY) wrong_type(key, want, e->value);
    const GGUFArray& a = std::get<GGUFArray>(e->value.data);
    if (a.count && !ok(a.elem_type)) wrong_type(key, want, e->value);
    return &a;
}

std::optional<std::vector<std::string>> strings_of(const GGUFFile& file, std::string_view key) {
    const GGUFArray* a = array_of(file, key, "an array of strings", [](GGUFType t) { return t == GGUFType::STRING; });
    if (!a) return std::nullopt;
    return std::vector<std::string>(a->strings.begin(), a->strings.end());
}
}  // namespace

VocabFields vocab_fields_from_gguf(const GGUFFile& file) {
    VocabFields f;
    f.model = string_of(file, "tokenizer.ggml.model");
    f.pre = string_of(file, "tokenizer.ggml.pre");
    f.chat_template = string_of(file, "tokenizer.chat_template");
    f.general_name = string_of(file, "general.name").value_or("");
    f.architecture = string_of(file, "general.architecture").value_or("");
    f.tokens = strings_of(file, "tokenizer.ggml.tokens");
    f.merges = strings_of(file, "tokenizer.ggml.merges");
    if (const GGUFArray* a = array_of(file, "tokenizer.ggml.scores", "an array of numbers",
                                      [](GGUFType t) { return gguf_is_integer(t) || t == GGUFType::FLOAT32 || t == GGUFType::FLOAT64; })) {
        f.scores.emplace();
        for (uint64_t i = 0; i < a->count; ++i)
            f.scores->push_back(gguf_is_integer(a->elem_type) ? float(a->int_at(i)) : float(a->float_at(i)));
    }
    if (const GGUFArray* a = array_of(file, "tokenizer.ggml.token_type", "an array of integers", gguf_is_integer)) {
        f.token_types.emplace();
        for (uint64_t i = 0; i < a->count; ++i) f.token_types->push_back(a->int_at(i));
    }
    for (const auto& [slot, key] : kIdKeys) {
        const std::string full = str("tokenizer.ggml.", key);
        const GGUFEntry* e = file.find(full);
        if (!e) continue;
        if (!gguf_is_integer(e->value.type)) wrong_type(full, "an integer token id", e->value);
        const int64_t id = std::holds_alternative<uint64_t>(e->value.data)
                               ? int64_t(std::min<uint64_t>(std::get<uint64_t>(e->value.data), INT64_MAX))
                               : std::get<int64_t>(e->value.data);
        f.id_keys.push_back({key, id});
    }
    f.add_space_prefix = flag_of(file, "tokenizer.ggml.add_space_prefix");
    f.add_bos = flag_of(file, "tokenizer.ggml.add_bos_token");
    f.add_eos = flag_of(file, "tokenizer.ggml.add_eos_token");
    return f;
}

}  // namespace lowbit::tokenizer
