// weights.h: the tensors of a model as views into the GGUF mapping (zero copy), named by role.
//
// Matrices keep their GGML layout: `rows` rows of `cols` elements (GGUF ne = [cols, rows]), the
// shape cpu::matvec / cpu::matmul take. Norm weights and biases are small and read often, so
// they are copied to owned f32 vectors at load (whatever their stored float type).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common.h"
#include "gguf/gguf.h"
#include "model/config.h"

namespace lowbit::model {

struct Matrix {
    const void* data = nullptr;   // rows x row_bytes, inside the mapping
    GGMLType type = GGMLType::F32;
    int64_t rows = 0, cols = 0;
    int64_t row_bytes = 0;
    bool present() const { return data != nullptr; }
};

using Vec = std::vector<float>;   // empty when the model has no such tensor

struct LayerWeights {
    Vec attn_norm;                // (n_embd,)
    Matrix wq, wk, wv;            // (q_dim, n_embd), (kv_dim, n_embd) x 2
    Matrix wqkv;                  // (q_dim + 2 kv_dim, n_embd) rows [q | k | v]: phi3's tensor, or a
                                  // copy of wq|wk|wv when they share a type (one matvec, one act quantization)
    Vec bq, bk, bv;               // (q_dim,), (kv_dim,), (kv_dim,): qwen2 always, others when present
    Vec bo;                       // (n_embd,) attn_output bias when present
    Vec q_norm, k_norm;           // qwen3, gemma3: (head_dim,)
    Matrix wo;                    // (n_embd, q_dim)
    Vec attn_post_norm;           // gemma3: (n_embd,)
    Vec ffn_norm;                 // (n_embd,)
    Matrix w_gate, w_up;          // (n_ff, n_embd)
    Matrix w_gate_up;             // (2 n_ff, n_embd) rows [gate | up]: phi3's ffn_up, or a copy of
                                  // w_gate|w_up when they share a type
    Matrix w_down;                // (n_embd, n_ff)
    Vec ffn_post_norm;            // gemma3: (n_embd,)
};

struct ModelWeights {
    Matrix token_embd;            // (n_vocab, n_embd)
    Vec output_norm;              // (n_embd,)
    Matrix output;                // (n_vocab, n_embd); == token_embd when tied
    bool tied_output = false;
    Vec rope_freqs;               // llama3: (n_rot / 2,) frequency divisors, empty when absent
    Vec rope_factors_long, rope_factors_short;   // phi3 LongRoPE: the same, per context size; or empty
    std::vector<LayerWeights> layers;
    std::map<std::string, uint64_t> bytes_by_type;  // every tensor of the file, by GGML type name
    std::vector<AlignedBuffer<uint8_t>> fused;      // owned storage of the concatenated matrices
    uint64_t fused_bytes = 0;                       // their size (their sources' pages are released)
};

// Maps every tensor the architecture needs; checks presence, shapes and that matrices have a
// CPU kernel. ModelError names the tensor, the expected and the found shape or type.
ModelWeights load_weights(const GGUFFile& file, const ModelConfig& config);

}  // namespace lowbit::model
