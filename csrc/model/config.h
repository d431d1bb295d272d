// config.h: model hyper-parameters read from a GGUF's "<arch>.*" metadata and checked against
// the tensor shapes (weights.cpp does the shape checks; this file reads and validates values).
//
// Supported architectures and what sets them apart (llama.cpp's graphs are the spec):
//   llama   Llama 2/3, Mistral, TinyLlama, SmolLM2: RMSNorm, SwiGLU, normal (interleaved) RoPE,
//           optional llama3 rope_freqs factors
//   qwen2   llama + q/k/v biases, NeoX RoPE
//   qwen3   llama + per-head RMSNorm of q and k (QK-norm), NeoX RoPE, head_dim from key_length
//   gemma3  embeddings x sqrt(n_embd), QK-norm, norms after attention and FFN too, GELU(tanh)
//           gated FFN, NeoX RoPE, sliding-window layers (layer i slides unless (i+1) % 6 == 0)
//           with their own RoPE base 10000
//   phi3    fused qkv and gate-up projections, NeoX RoPE
//   qwen3moe  qwen3 with a mixture-of-experts FFN: softmax router, top-k renormalised (moe.h)
//   qwen2moe  qwen2 attention; MoE (softmax top-k, not renormalised) plus a shared expert: a dense
//           SiLU FFN whose output is scaled by sigmoid(x . ffn_gate_inp_shexp) and added
//   olmoe   llama + RMSNorm of the whole q and k rows, NeoX RoPE, MoE with softmax top-k not renormalised
//   llama with <arch>.expert_count (Mixtral): MoE, softmax top-k renormalised
//   gemma2  gemma3 without QK-norm: attention logits soft-capped (c tanh(s / c)), final logits
//           soft-capped, every other layer slides (layer i slides unless (i+1) % 2 == 0)
//   granite llama + embedding, residual-branch, attention and logit scale factors from metadata
//   olmo2   no pre-norms: norms after attention and FFN, RMSNorm of the whole q and k rows, NeoX RoPE;
//           OLMo 3 (with attention.sliding_window): 3 sliding : 1 global layers, sliding ones unscaled RoPE
//   smollm3 llama where every 4th layer (i+1) % 4 == 0 has no RoPE
//   gpt-oss MoE with a biased router (softmax over the top-k logits), biased experts with a clamped
//           SwiGLU, attention sinks, every other layer slides, YaRN, NeoX RoPE, q/k/v/o biases,
//           the FFN's pre-norm stored as post_attention_norm
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "gguf/gguf.h"

namespace lowbit::model {

enum class Arch { Llama, Qwen2, Qwen3, Gemma3, Phi3, Qwen3Moe, Olmoe, Gemma2, Granite, Olmo2, Smollm3, GptOss,
                  Qwen2Moe };
enum class RopeMode { Normal, NeoX };   // Normal: pairs (2i, 2i+1); NeoX: pairs (i, i + n_rot/2)
// the gate's activation: act(gate) * up; SwigluOai (gpt-oss): g = min(gate, 7), u = clamp(up, -7, 7),
// g sigmoid(1.702 g) (u + 1)
enum class FfnAct { SiLU, GeluTanh, SwigluOai };
// How router logits become expert weights (llama.cpp's gating functions): Softmax over all
// experts, top-k of the probabilities; SoftmaxTopK (gpt-oss): top-k of the logits, softmax over
// those k.
enum class ExpertGating { Softmax, SoftmaxTopK };

// "llama, qwen2, qwen3, gemma3, phi3, ..."
const char* supported_architectures();
const char* arch_name(Arch a);

// RoPE parameters of one kind of layer (gemma3's sliding layers have their own base).
struct RopeParams {
    float freq_base = 10000.0f;
    float freq_scale = 1.0f;     // position multiplier (1 / rope.scaling.factor), linear and YaRN
    // YaRN (rope.scaling.type = yarn), as llama.cpp: per frequency pair i a mix of the scaled and
    // the unscaled angle, mix = ext_factor * ramp(i) between the correction dims of beta_fast and
    // beta_slow rotations over n_ctx_orig; cos and sin scaled by mscale(). ext_factor 0: linear.
    float ext_factor = 0.0f;
    int64_t n_ctx_orig = 0;      // rope.scaling.original_context_length (else context_length)
    float beta_fast = 32.0f, beta_slow = 1.0f;   // llama.cpp's fixed values
    float attn_factor = 1.0f;    // 1, or rope.scaling.attn_factor with LongRoPE (phi3)
    float mscale() const;        // attn_factor * (1 + 0.1 ln(1 / freq_scale)) with YaRN, else attn_factor
};

struct ModelConfig {
    Arch arch = Arch::Llama;
    int64_t n_vocab = 0;         // rows of token_embd
    int64_t n_ctx_train = 0;     // <arch>.context_length
    int64_t n_embd = 0;          // residual width
    int64_t n_layers = 0;
    int64_t n_head = 0;          // query heads
    int64_t n_head_kv = 0;       // key/value heads (GQA: n_head % n_head_kv == 0)
    int64_t head_dim = 0;        // per head, for q, k and v
    int64_t n_ff = 0;            // FFN hidden width
    int64_t n_rot = 0;           // rotated dims per head (<= head_dim, even)
    float norm_eps = 1e-5f;      // RMSNorm epsilon
    RopeMode rope_mode = RopeMode::Normal;
    RopeParams rope_global;      // full-attention layers
    RopeParams rope_swa;         // sliding-window layers
    int64_t n_swa = 0;           // sliding window (keys seen, self included); 0 = none
    std::vector<bool> layer_is_swa;  // (n_layers,)
    float attn_scale = 1.0f;     // multiplies q before q.k (1 / sqrt(head_dim))
    float embd_scale = 1.0f;     // multiplies the embedding rows (gemma3: sqrt(n_embd))
    float logit_softcap = 0.0f;  // <arch>.final_logit_softcapping: logits = c tanh(logits / c); 0 = none
    FfnAct ffn_act = FfnAct::SiLU;
    bool qkv_bias = false;       // qwen2
    bool qk_norm = false;        // qwen3, gemma3
    bool post_norms = false;     // gemma3: attn_post_norm and ffn_post_norm
    bool fused_qkv = false;      // phi3
    bool fused_gate_up = false;  // phi3
    bool qk_norm_full = false;   // olmoe, olmo2: q and k normed over the whole row (all heads at once)
    bool pre_norms = true;       // olmo2: false (no attn_norm / ffn_norm)
    float attn_softcap = 0.0f;   // gemma2: attention scores = c tanh(scores / c); 0 = none
    bool attn_sinks = false;     // gpt-oss: a learned logit per head joins every softmax (attn_sinks)
    float residual_scale = 1.0f; // granite: x += residual_scale * branch
    float logit_scale = 1.0f;    // granite: logits divided by it
    std::vector<bool> layer_has_rope;   // (n_layers,): false where a layer does not rotate (smollm3)
    // Mixture of experts (n_expert > 0): every layer's FFN is n_expert experts of width n_ff_exp,
    // n_expert_used of them per token (moe.h).
    int64_t n_expert = 0, n_expert_used = 0, n_ff_exp = 0;
    ExpertGating expert_gating = ExpertGating::Softmax;
    bool expert_weights_norm = false;   // divide the k weights by their sum (qwen3moe, Mixtral)
    int64_t n_ff_shexp = 0;      // qwen2moe: the shared expert's width (0 = no shared expert)

    int64_t q_dim() const { return n_head * head_dim; }
    int64_t kv_dim() const { return n_head_kv * head_dim; }
    bool any_swa() const { return n_swa > 0; }
    bool is_moe() const { return n_expert > 0; }
    bool has_rope(int64_t il) const { return layer_has_rope[size_t(il)]; }
};

// Reads and validates the metadata; ModelError names the key, what was expected and found.
// Shapes are checked by load_weights (weights.h), which needs this config.
ModelConfig load_config(const GGUFFile& file);

}  // namespace lowbit::model
