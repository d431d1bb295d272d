// config.cpp: see config.h.
#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "common.h"

namespace lowbit::model {
namespace {

struct ArchEntry { const char* name; Arch arch; };
constexpr ArchEntry kArchs[] = {
    {"llama", Arch::Llama}, {"qwen2", Arch::Qwen2}, {"qwen3", Arch::Qwen3},
    {"gemma3", Arch::Gemma3}, {"phi3", Arch::Phi3}, {"qwen3moe", Arch::Qwen3Moe}, {"olmoe", Arch::Olmoe},
    {"gemma2", Arch::Gemma2}, {"granite", Arch::Granite}, {"olmo2", Arch::Olmo2}, {"smollm3", Arch::Smollm3},
    {"gpt-oss", Arch::GptOss}, {"qwen2moe", Arch::Qwen2Moe},
};

// Metadata reads that fail as ModelError (a model problem), naming the key.
class Meta {
public:
    Meta(const GGUFFile& f, std::string prefix) : f_(f), prefix_(std::move(prefix)) {}

    std::string key(const char* suffix) const { return prefix_ + "." + suffix; }

    int64_t positive(const char* suffix) const {
        const std::string k = key(suffix);
        LOWBIT_CHECK(f_.find(k), ModelError, f_.path(), ": missing metadata key '", k, "'");
        const int64_t v = wrap([&] { return f_.get_i64(k); });
        LOWBIT_CHECK(v > 0 && v <= (int64_t(1) << 31), ModelError, f_.path(), ": metadata '", k,
                     "' = ", v, ", expected a positive count below 2^31");
        return v;
    }
    std::optional<int64_t> positive_opt(const char* suffix) const {
        if (!f_.find(key(suffix))) return std::nullopt;
        return positive(suffix);
    }
    // A count that may be 0 (dense files of MoE-capable architectures write expert_count = 0).
    int64_t count_or_zero(const char* suffix) const {
        const std::string k = key(suffix);
        if (!f_.find(k)) return 0;
        const int64_t v = wrap([&] { return f_.get_i64(k); });
        LOWBIT_CHECK(v >= 0 && v <= (int64_t(1) << 31), ModelError, f_.path(), ": metadata '", k, "' = ", v,
                     ", expected a count in [0, 2^31]");
        return v;
    }
    std::optional<float> f32_opt(const char* suffix) const {
        const std::string k = key(suffix);
        if (!f_.find(k)) return std::nullopt;
        const float v = wrap([&] { return f_.get_f32(k); });
        LOWBIT_CHECK(std::isfinite(v), ModelError, f_.path(), ": metadata '", k, "' is not finite (", v, ")");
        return v;
    }
    std::optional<std::string> str_opt(const char* suffix) const {
        const std::string k = key(suffix);
        if (!f_.find(k)) return std::nullopt;
        return std::string(wrap([&] { return f_.get_str(k); }));
    }

private:
    template <typename F>
    auto wrap(F&& fn) const -> decltype(fn()) {
        try { return fn(); } catch (const GGUFError& e) { throw ModelError(e.what()); }
    }
    const GGUFFile& f_;
    std::string prefix_;
};

Arch parse_arch(const GGUFFile& f) {
    LOWBIT_CHECK(f.find("general.architecture"), ModelError, f.path(),
                 ": missing metadata key 'general.architecture'");
    std::string name;
    try { name = std::string(f.get_str("general.architecture")); }
    catch (const GGUFError& e) { throw ModelError(e.what()); }
    for (const auto& a : kArchs)
        if (name == a.name) return a.arch;
    throw ModelError(str(f.path(), ": unsupported architecture '", printable(name), "'; supported: ",
                         supported_architectures()));
}

// RoPE scaling from "<arch>.rope.scaling.{type,factor,original_context_length,attn_factor}" (or the
// older scale_linear): none, linear or yarn; and phi3 LongRoPE where the file has
// rope_factors_long (llama.cpp: cos / sin times attn_factor).
RopeParams read_rope_scaling(const GGUFFile& f, const Meta& m, float freq_base, int64_t n_ctx_train) {
    RopeParams p;
    p.freq_base = freq_base;
    const auto type = m.str_opt("rope.scaling.type");
    std::optional<float> factor = m.f32_opt("rope.scaling.factor");
    if (!factor) factor = m.f32_opt("rope.scale_linear");
    if (type && *type != "linear" && *type != "none" && *type != "yarn")
        throw ModelError(str(f.path(), ": metadata '", m.key("rope.scaling.type"), "' = '", printable(*type),
                             "' is not supported; supported: linear, yarn, none"));
    if (!(type && *type == "none") && factor && *factor != 0.0f) {
        LOWBIT_CHECK(*factor > 0.0f, ModelError, f.path(), ": metadata '", m.key("rope.scaling.factor"), "' = ",
                     *factor, ", expected > 0");
        p.freq_scale = 1.0f / *factor;
        if (type && *type == "yarn") p.ext_factor = 1.0f;
    }
    const bool longrope = f.find_tensor("rope_factors_long.weight") != nullptr;
    if (p.ext_factor != 0.0f || longrope)
        p.n_ctx_orig = m.positive_opt("rope.scaling.original_context_length").value_or(n_ctx_train);
    if (longrope) {
        p.attn_factor = m.f32_opt("rope.scaling.attn_factor").value_or(1.0f);
        LOWBIT_CHECK(std::isfinite(p.attn_factor) && p.attn_factor > 0.0f, ModelError, f.path(), ": ",
                     m.key("rope.scaling.attn_factor"), " = ", p.attn_factor, ", expected > 0");
    }
    return p;
}

// The number of layers the tensors have: 1 + the largest N of a "blk.N." tensor name (0 without).
int64_t layers_in_tensors(const GGUFFile& f) {
    int64_t n = 0;
    for (const TensorInfo& t : f.tensors()) {
        const std::string_view name = t.name;
        if (name.rfind("blk.", 0) != 0) continue;
        int64_t index = 0;
        size_t i = 4;
        for (; i < name.size() && i < 14 && name[i] >= '0' && name[i] <= '9'; ++i)
            index = index * 10 + (name[i] - '0');
        if (i > 4 && i < name.size() && name[i] == '.') n = std::max(n, index + 1);
    }
    return n;
}

// llama.cpp's rule: the vocabulary (tokenizer.ggml.tokens) has one token per embedding row.
void check_vocab(const GGUFFile& f, int64_t n_vocab) {
    const char* key = "tokenizer.ggml.tokens";
    if (!f.find(key)) return;    // the tokenizer reports a missing vocabulary
    uint64_t count = 0;
    try { count = f.get_array(key, GGUFType::STRING).count; }
    catch (const GGUFError& e) { throw ModelError(e.what()); }
    LOWBIT_CHECK(count == uint64_t(n_vocab), ModelError, f.path(), ": metadata '", key, "' has ", count,
                 " tokens but token_embd.weight has ", n_vocab, " rows (one token per row expected)");
    if (const TensorInfo* out = f.find_tensor("output.weight"))
        LOWBIT_CHECK(out->n_dims == 2 && out->ne[1] == n_vocab, ModelError, f.path(), ": output.weight has ",
                     out->n_dims == 2 ? out->ne[1] : 0, " rows but the vocabulary has ", n_vocab, " tokens");
}

// Which layers slide: "<arch>.attention.sliding_window_pattern" when present (a period p: layer i
// slides unless (i + 1) % p == 0; or one bool per layer), else the architecture's period.
void read_swa_layers(const GGUFFile& f, const Meta& m, ModelConfig& c, int64_t default_period) {
    const std::string key = m.key("attention.sliding_window_pattern");
    const GGUFEntry* e = f.find(key);
    int64_t period = default_period;
    if (e && e->value.type == GGUFType::ARRAY) {
        const GGUFArray* a = &std::get<GGUFArray>(e->value.data);
        LOWBIT_CHECK(a->elem_type == GGUFType::BOOL && a->count == uint64_t(c.n_layers), ModelError, f.path(),
                     ": metadata '", key, "' must be an array of ", c.n_layers, " BOOL (one per layer), found ",
                     gguf_type_label(e->value), " of ", a->count);
        for (int64_t i = 0; i < c.n_layers; ++i) c.layer_is_swa[size_t(i)] = a->raw[size_t(i)] != 0;
        return;
    }
    if (e) period = m.positive("attention.sliding_window_pattern");
    for (int64_t i = 0; i < c.n_layers; ++i) c.layer_is_swa[size_t(i)] = (i + 1) % period != 0;
}

// Experts: "<arch>.expert_count" / "expert_used_count" / "expert_feed_forward_length". The MoE
// architectures need them; llama has them for Mixtral; elsewhere a non-zero count is refused.
void read_experts(const GGUFFile& f, const Meta& m, ModelConfig& c) {
    const bool moe_arch = c.arch == Arch::Qwen3Moe || c.arch == Arch::Olmoe || c.arch == Arch::GptOss ||
                          c.arch == Arch::Qwen2Moe;
    c.n_expert = m.count_or_zero("expert_count");
    if (moe_arch)
        LOWBIT_CHECK(c.n_expert > 0, ModelError, f.path(), ": metadata '", m.key("expert_count"),
                     "' is missing or 0; architecture ", arch_name(c.arch), " needs experts");
    if (c.n_expert == 0) return;
    LOWBIT_CHECK(moe_arch || c.arch == Arch::Llama, ModelError, f.path(), ": metadata '", m.key("expert_count"),
                 "' = ", c.n_expert, ": experts are not supported for architecture ", arch_name(c.arch));
    c.n_expert_used = m.positive("expert_used_count");
    LOWBIT_CHECK(c.n_expert_used <= c.n_expert, ModelError, f.path(), ": metadata '", m.key("expert_used_count"),
                 "' = ", c.n_expert_used, " exceeds ", m.key("expert_count"), " = ", c.n_expert);
    // llama.cpp: qwen3moe's / qwen2moe's experts are expert_feed_forward_length wide (else n_ff / k),
    // the others n_ff
    if (c.arch == Arch::Qwen3Moe || c.arch == Arch::Qwen2Moe) {
        const auto width = m.positive_opt("expert_feed_forward_length");
        c.n_ff_exp = width ? *width : m.positive("feed_forward_length") / c.n_expert_used;
    } else if (c.arch == Arch::GptOss) {
        c.n_ff_exp = m.positive("expert_feed_forward_length");
    } else {
        c.n_ff_exp = m.positive("feed_forward_length");
    }
    LOWBIT_CHECK(c.n_ff_exp > 0, ModelError, f.path(), ": expert width is 0");
    if (c.arch == Arch::Qwen2Moe) {   // the shared expert: expert_shared_feed_forward_length, else n_ff
        const auto width = m.positive_opt("expert_shared_feed_forward_length");
        c.n_ff_shexp = width ? *width : m.positive("feed_forward_length");
    }
    c.expert_weights_norm = c.arch == Arch::Qwen3Moe || c.arch == Arch::Llama;
    if (c.arch == Arch::GptOss) c.expert_gating = ExpertGating::SoftmaxTopK;
}

// granite: "<arch>.embedding_scale", "residual_scale", "attention.scale" (0 / absent: none) and
// the required "logit_scale" (logits are divided by it), as llama.cpp.
void read_granite_scales(const GGUFFile& f, const Meta& m, ModelConfig& c) {
    auto scale = [&](const char* suffix, float fallback) {
        const float v = m.f32_opt(suffix).value_or(0.0f);
        LOWBIT_CHECK(v >= 0.0f, ModelError, f.path(), ": metadata '", m.key(suffix), "' = ", v, ", expected >= 0");
        return v == 0.0f ? fallback : v;
    };
    c.embd_scale = scale("embedding_scale", 1.0f);
    c.residual_scale = scale("residual_scale", 1.0f);
    c.attn_scale = scale("attention.scale", c.attn_scale);
    LOWBIT_CHECK(m.f32_opt("logit_scale"), ModelError, f.path(), ": missing metadata key '", m.key("logit_scale"), "'");
    c.logit_scale = scale("logit_scale", 1.0f);
}

}  // namespace

float RopeParams::mscale() const {
    return ext_factor != 0.0f ? attn_factor * (1.0f + 0.1f * std::log(1.0f / freq_scale)) : attn_factor;
}

const char* supported_architectures() {
    static const std::string names = [] {
        std::string out;
        for (const auto& a : kArchs) out += std::string(out.empty() ? "" : ", ") + a.name;
        return out;
    }();
    return names.c_str();
}

const char* arch_name(Arch a) {
    for (const auto& e : kArchs)
        if (e.arch == a) return e.name;
    return "?";
}

ModelConfig load_config(const GGUFFile& f) {
    ModelConfig c;
    c.arch = parse_arch(f);
    const Meta m(f, arch_name(c.arch));

    const TensorInfo* embd = f.find_tensor("token_embd.weight");
    LOWBIT_CHECK(embd, ModelError, f.path(), ": missing tensor 'token_embd.weight'");
    c.n_vocab = embd->ne[1];
    if (auto v = m.positive_opt("vocab_size"))
        LOWBIT_CHECK(*v == c.n_vocab, ModelError, f.path(), ": metadata '", m.key("vocab_size"), "' = ", *v,
                     " but token_embd.weight has ", c.n_vocab, " rows");

    c.n_ctx_train = m.positive("context_length");
    c.n_embd = m.positive("embedding_length");
    c.n_layers = m.positive("block_count");
    const int64_t tensor_layers = layers_in_tensors(f);
    LOWBIT_CHECK(c.n_layers == tensor_layers, ModelError, f.path(), ": metadata '", m.key("block_count"), "' = ",
                 c.n_layers, " but the file has tensors for ", tensor_layers, " layers (blk.0 .. blk.",
                 tensor_layers - 1, ")");
    check_vocab(f, c.n_vocab);
    read_experts(f, m, c);
    c.n_ff = c.is_moe() ? m.positive_opt("feed_forward_length").value_or(c.n_ff_exp) : m.positive("feed_forward_length");
    c.n_head = m.positive("attention.head_count");
    c.n_head_kv = m.positive_opt("attention.head_count_kv").value_or(c.n_head);
    LOWBIT_CHECK(c.n_head % c.n_head_kv == 0, ModelError, f.path(), ": ", m.key("attention.head_count"), " = ",
                 c.n_head, " is not a multiple of ", m.key("attention.head_count_kv"), " = ", c.n_head_kv);
    const auto key_len = m.positive_opt("attention.key_length");
    if (!key_len)
        LOWBIT_CHECK(c.n_embd % c.n_head == 0, ModelError, f.path(), ": ", m.key("embedding_length"), " = ",
                     c.n_embd, " is not a multiple of ", m.key("attention.head_count"), " = ", c.n_head,
                     " and there is no ", m.key("attention.key_length"));
    c.head_dim = key_len.value_or(c.n_embd / c.n_head);
    if (auto vlen = m.positive_opt("attention.value_length"))
        LOWBIT_CHECK(*vlen == c.head_dim, ModelError, f.path(), ": ", m.key("attention.value_length"), " = ", *vlen,
                     " differs from the key length ", c.head_dim, " (unsupported)");
    c.n_rot = m.positive_opt("rope.dimension_count").value_or(c.head_dim);
    LOWBIT_CHECK(c.n_rot <= c.head_dim && c.n_rot % 2 == 0, ModelError, f.path(), ": ",
                 m.key("rope.dimension_count"), " = ", c.n_rot, ", expected an even number <= head_dim ",
                 c.head_dim);

    const auto eps = m.f32_opt("attention.layer_norm_rms_epsilon");
    LOWBIT_CHECK(eps, ModelError, f.path(), ": missing metadata key '", m.key("attention.layer_norm_rms_epsilon"),
                 "'");
    LOWBIT_CHECK(*eps > 0.0f && *eps < 1.0f, ModelError, f.path(), ": ", m.key("attention.layer_norm_rms_epsilon"),
                 " = ", *eps, ", expected in (0, 1)");
    c.norm_eps = *eps;

    const float freq_base = m.f32_opt("rope.freq_base").value_or(10000.0f);
    LOWBIT_CHECK(freq_base > 1.0f, ModelError, f.path(), ": ", m.key("rope.freq_base"), " = ", freq_base,
                 ", expected > 1");
    c.rope_global = read_rope_scaling(f, m, freq_base, c.n_ctx_train);
    c.rope_swa = c.rope_global;
    c.attn_scale = float(1.0 / std::sqrt(double(c.head_dim)));
    c.logit_softcap = m.f32_opt("final_logit_softcapping").value_or(0.0f);
    LOWBIT_CHECK(c.logit_softcap >= 0.0f, ModelError, f.path(), ": ", m.key("final_logit_softcapping"), " = ",
                 c.logit_softcap, ", expected >= 0");
    c.layer_is_swa.assign(size_t(c.n_layers), false);
    c.layer_has_rope.assign(size_t(c.n_layers), true);

    switch (c.arch) {
        case Arch::Llama: break;
        case Arch::Qwen2: c.rope_mode = RopeMode::NeoX; c.qkv_bias = true; break;
        case Arch::Qwen3: c.rope_mode = RopeMode::NeoX; c.qk_norm = true; break;
        case Arch::Phi3: c.rope_mode = RopeMode::NeoX; c.fused_qkv = c.fused_gate_up = true; break;
        case Arch::Qwen3Moe: c.rope_mode = RopeMode::NeoX; c.qk_norm = true; break;
        case Arch::Qwen2Moe: c.rope_mode = RopeMode::NeoX; c.qkv_bias = true; break;
        case Arch::Olmoe: c.rope_mode = RopeMode::NeoX; c.qk_norm_full = true; break;
        case Arch::Olmo2:
            c.rope_mode = RopeMode::NeoX;
            c.qk_norm_full = c.post_norms = true;
            c.pre_norms = false;
            // OLMo 3 (olmo2 files with a window): 3 sliding : 1 global layers; the sliding ones rotate
            // with the global base but unscaled (llama.cpp's graph: freq_scale 1, no YaRN mix or mscale)
            c.n_swa = m.count_or_zero("attention.sliding_window");
            if (c.n_swa > 0) {
                c.rope_swa = c.rope_global;
                c.rope_swa.freq_scale = 1.0f;
                c.rope_swa.ext_factor = 0.0f;
                c.rope_swa.attn_factor = 1.0f;
                read_swa_layers(f, m, c, 4);
            }
            break;
        case Arch::Smollm3:   // llama.cpp: n_no_rope_layer_step = 4
            for (int64_t i = 0; i < c.n_layers; ++i) c.layer_has_rope[size_t(i)] = (i + 1) % 4 != 0;
            break;
        case Arch::Granite: read_granite_scales(f, m, c); break;
        case Arch::GptOss:
            c.rope_mode = RopeMode::NeoX;
            c.attn_sinks = true;
            c.ffn_act = FfnAct::SwigluOai;   // the experts' activation (gpt-oss has no dense FFN)
            c.n_swa = m.positive("attention.sliding_window");
            c.rope_swa.freq_base = m.f32_opt("rope.freq_base_swa").value_or(c.rope_global.freq_base);
            read_swa_layers(f, m, c, 2);     // sliding layers keep the global layers' YaRN (llama.cpp)
            break;
        case Arch::Gemma2:
            c.rope_mode = RopeMode::NeoX;
            c.post_norms = true;
            c.ffn_act = FfnAct::GeluTanh;
            c.embd_scale = std::sqrt(float(c.n_embd));
            c.n_swa = m.positive_opt("attention.sliding_window").value_or(4096);   // llama.cpp's default
            c.rope_swa.freq_base = m.f32_opt("rope.freq_base_swa").value_or(c.rope_global.freq_base);
            c.attn_softcap = m.f32_opt("attn_logit_softcapping").value_or(50.0f);
            c.logit_softcap = m.f32_opt("final_logit_softcapping").value_or(30.0f);
            LOWBIT_CHECK(c.attn_softcap > 0.0f && c.logit_softcap > 0.0f, ModelError, f.path(), ": ",
                         m.key("attn_logit_softcapping"), " and ", m.key("final_logit_softcapping"),
                         " must be > 0");
            if (c.n_layers == 46) c.attn_scale = float(1.0 / std::sqrt(double(c.n_embd / c.n_head)));   // 27B
            read_swa_layers(f, m, c, 2);
            break;
        case Arch::Gemma3:
            c.rope_mode = RopeMode::NeoX;
            c.qk_norm = c.post_norms = true;
            c.ffn_act = FfnAct::GeluTanh;
            c.embd_scale = std::sqrt(float(c.n_embd));
            c.n_swa = m.positive("attention.sliding_window");
            c.rope_swa = c.rope_global;   // unscaled (freq_scale 1: YaRN's mix and mscale do nothing)
            c.rope_swa.freq_base = m.f32_opt("rope.freq_base_swa").value_or(10000.0f);
            c.rope_swa.freq_scale = 1.0f;
            // llama.cpp: the 27B (62 layers) scales queries by 1/sqrt(n_embd / n_head)
            if (c.n_layers == 62) c.attn_scale = float(1.0 / std::sqrt(double(c.n_embd) / double(c.n_head)));
            read_swa_layers(f, m, c, 6);
            break;
    }
    return c;
}

}  // namespace lowbit::model
