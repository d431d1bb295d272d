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
    const void* data = nullptr;   // rows x row_bytes, inside the mapping (or a fused copy); null once packed from a copy
    GGMLType type = GGMLType::F32;
    int64_t rows = 0, cols = 0;
    int64_t row_bytes = 0;
    const void* packed = nullptr;   // the same rows repacked at load (cpu/kernels.h, PackedLayout): what matmuls read
    bool present() const { return data != nullptr || packed != nullptr; }
};

using Vec = std::vector<float>;   // empty when the model has no such tensor

// A stacked expert tensor as GGUF stores it: ne = [cols, rows, n], expert-major, so expert e is
// the (rows, cols) matrix starting stride = rows * row_bytes bytes after expert e - 1. Where the
// type has a packed layout, load_weights repacks every expert into one owned buffer (expert e's
// packed strips at packed + e * packed_stride) and releases the mapped pages (first.data keeps
// the mapping's address: a page read through it again would come back from the file).
struct ExpertMatrices {
    Matrix first;                 // expert 0
    int64_t n = 0;                // experts
    int64_t stride = 0;           // bytes per expert in the mapping
    const void* packed = nullptr; // all experts packed (cpu/kernels.h, PackedLayout), or null
    int64_t packed_stride = 0;    // packed bytes per expert (cpu::packed_bytes, a multiple of 64)
    bool present() const { return first.present(); }
    Matrix expert(int64_t e) const {
        Matrix m = first;
        m.data = static_cast<const uint8_t*>(first.data) + e * stride;
        if (packed) m.packed = static_cast<const uint8_t*>(packed) + e * packed_stride;
        return m;
    }
};

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
    Vec attn_sinks;               // gpt-oss: (n_head,) one extra softmax logit per head
    // Mixture of experts (config.is_moe(); the dense FFN matrices are then absent)
    Matrix router;                // ffn_gate_inp: (n_expert, n_embd)
    Vec router_b;                 // gpt-oss: (n_expert,)
    ExpertMatrices gate_exps, up_exps;   // (n_ff_exp, n_embd) each
    ExpertMatrices down_exps;     // (n_embd, n_ff_exp) each
    Vec gate_exps_b, up_exps_b;   // gpt-oss: (n_expert, n_ff_exp), expert-major
    Vec down_exps_b;              // gpt-oss: (n_expert, n_embd)
    Vec shexp_gate;               // qwen2moe: ffn_gate_inp_shexp (n_embd,): the shared expert's gate
    Matrix gate_shexp, up_shexp;  // qwen2moe: (n_ff_shexp, n_embd)
    Matrix down_shexp;            // qwen2moe: (n_embd, n_ff_shexp)
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
    std::vector<AlignedBuffer<uint8_t>> fused;      // owned storage of the concatenated and the packed matrices
    uint64_t fused_bytes = 0;                       // their size (their sources' pages are released)
    uint64_t packed_bytes = 0;                      // the packed ones' share of fused_bytes
};

// Whether load_weights repacks matrices (cpu/kernels.h, PackedLayout): where the kernel set in use
// has a packed strip GEMM for the type, unless env LOWBIT_REPACK=0 (A/B measurements).
bool repack_enabled();

// The GGML bytes of row r of m: in place, or unpacked from m.packed into a buffer of the calling
// thread (valid until its next call).
const uint8_t* matrix_row(const Matrix& m, int64_t r);

// Maps every tensor the architecture needs; checks presence, shapes and that matrices have a
// CPU kernel. ModelError names the tensor, the expected and the found shape or type.
ModelWeights load_weights(const GGUFFile& file, const ModelConfig& config);

}  // namespace lowbit::model
