// vocab.h: the vocabulary as llama.cpp loads it from GGUF metadata (llama-vocab.cpp, `load`):
// token attributes, the special ids (explicit keys first, then llama.cpp's text-based detection),
// add-BOS/EOS defaults per tokenizer model, the end-of-generation set and the per-model
// lstrip/rstrip attributes. Two front-ends fill VocabFields: vocab_fields_from_gguf (a C caller
// needs nothing else) and the Python binding (a metadata dict); load_vocab is the one logic.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace lowbit::tokenizer {

// The tokenizer.ggml.* metadata, typed; absent keys are nullopt / missing from id_keys.
struct VocabFields {
    std::optional<std::string> model, pre, chat_template;
    std::optional<std::vector<std::string>> tokens, merges;
    std::optional<std::vector<float>> scores;
    std::optional<std::vector<int64_t>> token_types;
    std::vector<std::pair<std::string, int64_t>> id_keys;   // "bos_token_id" -> value, as present
    std::optional<bool> add_space_prefix, add_bos, add_eos;
    std::string general_name, architecture;
};

// The validated vocabulary; ModelError naming the key for what the tokenizer cannot use.
// `warnings` receives what llama.cpp only logs (an id outside the vocabulary, no pre label).
VocabData load_vocab(VocabFields fields, std::vector<std::string>& warnings);   // takes the arrays over

// The fields of a GGUF file; ModelError naming the key when one has the wrong type.
VocabFields vocab_fields_from_gguf(const GGUFFile& file);

// Special-id slots in the order llama.cpp reads their keys (VocabData::slots follows it).
extern const std::vector<std::pair<const char*, const char*>> kIdKeys;   // slot, key

}  // namespace lowbit::tokenizer
