// chat_c.cpp: chat templates in the C API. Templates are jinja2 programs, rendered in Python by
// lowbit.runtime.templates; C has no jinja2, so the C API recognises the templates it knows BY
// THEIR TEXT (exact match after the one escape jinja string literals share, "\n") and renders
// those forms in C++. Anything else is LOWBIT_ERR_TEMPLATE: "template not recognised: use Python's
// jinja2 renderer". tests/test_capi_chat.py checks every form against the jinja2 rendering.
//
// A rendering is a list of pieces, each from the template's own text or from a message's
// content: the content pieces are the literal spans inside which chat_tokenize does not parse
// special tokens (Python's render_chat_spans + Model.chat_ids).
#include "capi/capi_internal.h"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

using lowbit::capi::fail;
using lowbit::capi::guarded;
using lowbit::capi::ModelShared;
using lowbit::capi::TemplateError;


namespace {
using lowbit::str;

enum class Form { ChatML, Llama3, Gemma, Phi3 };

// How a recognised template renders. Variants of a form differ in the options below.
struct Recognised {
    Form form = Form::ChatML;
    std::optional<std::string> default_system;   // ChatML: the system turn added when the first message is no system one
    bool trim = false;            // content | trim (Python str.strip())
    bool bos_on_first = false;    // llama3: bos_token before the first message only (none for no messages)
    enum { kSystemMerged, kSystemMergedStrict, kSystemRejected } gemma_system = kSystemMerged;
    bool alternate = false;       // gemma: roles must alternate user / assistant (raise_exception)
    bool phi3_official = false;   // only system / user / assistant turns; eos_token without a generation prompt
};

// lowbit.runtime.templates.BUILTIN_TEMPLATES (used for a file without tokenizer.chat_template).
const char* const kBuiltinChatML =
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const char* const kBuiltinGemma =
    "{{ bos_token }}{% if messages and messages[0]['role'] == 'system' %}"
    "{% set sys = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set sys = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (sys if loop.first else '') + m['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";
const char* const kBuiltinLlama3 =
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
    " + m['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
const char* const kBuiltinPhi3 =
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}";

// The models' own templates (tokenizer.chat_template as their GGUFs carry them).
const char* const kHfChatML =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
// SmolLM2, Qwen2: the same with a default system turn; the system text sits between these two.
const char* const kChatMLSystemHead =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n";
const char* const kChatMLSystemTail =
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const char* const kLlama3Instruct =   // Meta-Llama-3-8B-Instruct
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
const char* const kGemma2It =
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}";
const char* const kGemma3It = R"TPL({{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '

' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '

' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '
' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>
' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model
'}}
{%- endif -%}
)TPL";
const char* const kPhi3Instruct =   // Phi-3-mini-4k-instruct
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}";

// The text jinja sees: the two-character escape \n inside string literals is a newline, so both
// spellings are one template. Other backslashes are left (such a template then matches nothing).
std::string canonical(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '\\' && i + 1 < text.size() && text[i + 1] == 'n') { out += '\n'; ++i; }
        else out += text[i];
    }
    return out;
}

std::optional<Recognised> recognise(std::string_view raw) {
    const std::string text = canonical(raw);
    Recognised r;
    if (text == kBuiltinChatML || text == kHfChatML) return r;
    const std::string_view head = kChatMLSystemHead, tail = kChatMLSystemTail;
    if (text.size() > head.size() + tail.size() && text.compare(0, head.size(), head) == 0 &&
        text.compare(text.size() - tail.size(), tail.size(), tail) == 0) {
        const std::string system = text.substr(head.size(), text.size() - head.size() - tail.size());
        // a plain string literal body: no quote, escape or template syntax of its own
        if (system.find_first_of("'\\{}") == std::string::npos) {
            r.default_system = system;
            return r;
        }
    }
    if (text == kBuiltinLlama3 || text == kLlama3Instruct) {
        r.form = Form::Llama3;
        r.trim = r.bos_on_first = text == kLlama3Instruct;
        return r;
    }
    if (text == kBuiltinGemma || text == kGemma2It || text == kGemma3It) {
        r.form = Form::Gemma;
        if (text != kBuiltinGemma) {
            r.trim = r.alternate = true;
            r.gemma_system = text == kGemma3It ? Recognised::kSystemMergedStrict : Recognised::kSystemRejected;
        }
        return r;
    }
    if (text == kBuiltinPhi3 || text == kPhi3Instruct) {
        r.form = Form::Phi3;
        r.phi3_official = text == kPhi3Instruct;
        return r;
    }
    return std::nullopt;
}

const char* form_name(Form f) {
    switch (f) {
        case Form::ChatML: return "chatml";
        case Form::Llama3: return "llama3";
        case Form::Gemma: return "gemma";
        case Form::Phi3: return "phi3";
    }
    return "";
}

// ---- UTF-8 helpers ------------------------------------------------------------------------

// Decodes the code point at s[i] (s valid UTF-8), advancing i.
uint32_t next_cp(std::string_view s, size_t& i) {
    const uint8_t b = uint8_t(s[i]);
    const int n = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
    uint32_t cp = n == 1 ? b : b & (0xFF >> (n + 1));
    for (int k = 1; k < n; ++k) cp = (cp << 6) | (uint8_t(s[i + size_t(k)]) & 0x3F);
    i += size_t(n);
    return cp;
}

bool valid_utf8(std::string_view s) {
    for (size_t i = 0; i < s.size();) {
        const uint8_t b = uint8_t(s[i]);
        const size_t n = b < 0x80 ? 1 : (b >= 0xC2 && b <= 0xDF) ? 2 : (b >= 0xE0 && b <= 0xEF) ? 3 : (b >= 0xF0 && b <= 0xF4) ? 4 : 0;
        if (n == 0 || i + n > s.size()) return false;
        for (size_t k = 1; k < n; ++k) {
            const uint8_t c = uint8_t(s[i + k]);
            uint8_t lo = 0x80, hi = 0xBF;
            if (k == 1 && b == 0xE0) lo = 0xA0;
            if (k == 1 && b == 0xED) hi = 0x9F;   // no surrogates (Python str cannot hold them as UTF-8)
            if (k == 1 && b == 0xF0) lo = 0x90;
            if (k == 1 && b == 0xF4) hi = 0x8F;
            if (c < lo || c > hi) return false;
        }
        i += n;
    }
    return true;
}

size_t count_cps(std::string_view s) {
    size_t n = 0;
    for (char c : s) n += (uint8_t(c) & 0xC0) != 0x80;
    return n;
}

// Python's str.isspace() (what jinja's trim filter strips).
bool py_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::string py_strip(std::string_view s) {
    size_t i = 0, first = s.size();
    while (i < s.size()) {
        const size_t at = i;
        if (!py_space(next_cp(s, i))) { first = at; break; }
    }
    size_t last = first;
    for (i = first; i < s.size();)
        if (!py_space(next_cp(s, i))) last = i;
    return std::string(s.substr(first, last - first));
}

// ---- rendering ----------------------------------------------------------------------------

struct Message {
    std::string role, content;
};

struct Rendering {
    std::string text;
    std::vector<std::pair<int64_t, int64_t>> spans;   // [first, last) code points of message contents
    int64_t cps = 0;
    void add(std::string_view s) { text += s; cps += int64_t(count_cps(s)); }
    void content(std::string_view s) {
        if (!s.empty()) spans.emplace_back(cps, cps + int64_t(count_cps(s)));
        add(s);
    }
};

[[noreturn]] void raise_exception(const std::string& message) {
    throw TemplateError("chat template raised: " + message);   // Python's text for raise_exception
}

Rendering render(const Recognised& t, const std::vector<Message>& msgs, bool add_generation_prompt,
                 const std::string& bos, const std::string& eos) {
    Rendering out;
    auto body = [&](const Message& m) { return t.trim ? py_strip(m.content) : m.content; };
    switch (t.form) {
    case Form::ChatML:
        for (size_t i = 0; i < msgs.size(); ++i) {
            if (i == 0 && t.default_system && msgs[0].role != "system")
                out.add("<|im_start|>system\n" + *t.default_system + "<|im_end|>\n");
            out.add("<|im_start|>" + msgs[i].role + "\n");
            out.content(msgs[i].content);
            out.add("<|im_end|>\n");
        }
        if (add_generation_prompt) out.add("<|im_start|>assistant\n");
        break;
    case Form::Llama3:
        if (!t.bos_on_first) out.add(bos);
        for (size_t i = 0; i < msgs.size(); ++i) {
            if (i == 0 && t.bos_on_first) out.add(bos);
            out.add("<|start_header_id|>" + msgs[i].role + "<|end_header_id|>\n\n");
            out.content(body(msgs[i]));
            out.add("<|eot_id|>");
        }
        if (add_generation_prompt) out.add("<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case Form::Gemma: {
        if (t.gemma_system != Recognised::kSystemMerged && msgs.empty())
            throw TemplateError("chat template failed: UndefinedError: the template reads messages[0] of no messages");
        out.add(bos);
        const bool has_system = !msgs.empty() && msgs[0].role == "system";
        if (has_system && t.gemma_system == Recognised::kSystemRejected) raise_exception("System role not supported");
        const size_t first = has_system ? 1 : 0;
        for (size_t i = first; i < msgs.size(); ++i) {
            if (t.alternate && (msgs[i].role == "user") != ((i - first) % 2 == 0))
                raise_exception("Conversation roles must alternate user/assistant/user/assistant/...");
            out.add("<start_of_turn>" + (msgs[i].role == "assistant" ? std::string("model") : msgs[i].role) + "\n");
            if (i == first && has_system) {
                out.content(msgs[0].content);
                out.add("\n\n");
            }
            out.content(body(msgs[i]));
            out.add("<end_of_turn>\n");
        }
        if (add_generation_prompt) out.add("<start_of_turn>model\n");
        break;
    }
    case Form::Phi3:
        for (const Message& m : msgs) {
            if (t.phi3_official && m.role != "system" && m.role != "user" && m.role != "assistant") continue;
            out.add("<|" + m.role + "|>\n");
            out.content(m.content);
            out.add("<|end|>\n");
        }
        if (add_generation_prompt) out.add("<|assistant|>\n");
        else if (t.phi3_official) out.add(eos);
        break;
    }
    return out;
}

std::vector<Message> read_messages(const lowbit_chat_message* messages, size_t n, bool chat_roles) {
    LOWBIT_CHECK(messages || n == 0, ValueError, "messages is NULL");
    std::vector<Message> out;
    for (size_t i = 0; i < n; ++i) {
        const char* role = messages[i].role;
        const char* content = messages[i].content;
        LOWBIT_CHECK(role && *role, ValueError, "messages[", i, "] has no role; a role is a non-empty string");
        LOWBIT_CHECK(content, ValueError, "messages[", i, "] (role '", role, "') has NULL content");
        LOWBIT_CHECK(valid_utf8(role) && valid_utf8(content), ValueError, "messages[", i, "] is not valid UTF-8");
        const std::string_view r = role;
        LOWBIT_CHECK(!chat_roles || r == "system" || r == "user" || r == "assistant" || r == "tool", ValueError,
                     "messages[", i, "] has role '", role, "'; roles are system, user, assistant, tool");
        out.push_back(Message{role, content});
    }
    return out;
}

// The model's template as Python's Model.chat_template picks it: the file's, else the built-in
// one of its architecture (or of its special tokens).
std::string model_template(const ModelShared& m) {
    const auto& vocab = m.tokenizer.impl->vocab();
    if (vocab.chat_template) return *vocab.chat_template;
    const std::string& arch = m.architecture;
    if (arch == "gemma" || arch == "gemma2" || arch == "gemma3") return kBuiltinGemma;
    if (arch == "phi3") return kBuiltinPhi3;
    if (arch == "gpt-oss") throw TemplateError("template not recognised: use Python's jinja2 renderer (gpt-oss's built-in harmony template)");
    if (m.tokenizer.impl->token_id("<|start_header_id|>") >= 0) return kBuiltinLlama3;
    return kBuiltinChatML;
}

Recognised recognised_or_throw(const std::string& text) {
    std::optional<Recognised> r = recognise(text);
    if (!r) throw TemplateError("template not recognised: use Python's jinja2 renderer");
    return *r;
}

std::string piece(const ModelShared& m, int32_t id) {   // Python's Model._piece
    const auto& tokens = m.tokenizer.impl->vocab().tokens;
    return id >= 0 && size_t(id) < tokens.size() ? tokens[size_t(id)] : std::string();
}

Rendering render_model(const ModelShared& m, const lowbit_chat_message* messages, size_t n, bool add_generation_prompt,
                       bool chat_roles) {
    const Recognised t = recognised_or_throw(model_template(m));
    const auto& vocab = m.tokenizer.impl->vocab();
    return render(t, read_messages(messages, n, chat_roles), add_generation_prompt, piece(m, vocab.bos), piece(m, vocab.eos));
}

lowbit_status copy_out(const std::string& text, char* buf, size_t capacity, size_t* n_bytes, const char* what) {
    *n_bytes = text.size();
    if (text.size() > capacity)
        return fail(LOWBIT_ERR_BUFFER, str(what, ": ", text.size(), " bytes do not fit in ", capacity));
    std::copy(text.begin(), text.end(), buf);
    return LOWBIT_OK;
}
}  // namespace

extern "C" {

lowbit_status lowbit_chat_template_name(const lowbit_model* model, const char** name) {
    LOWBIT_REQUIRE(model && name, "lowbit_chat_template_name: NULL argument");
    *name = nullptr;
    return guarded([&] {
        *name = form_name(recognised_or_throw(model_template(*model->shared)).form);
        return LOWBIT_OK;
    });
}

lowbit_status lowbit_chat_render(const lowbit_model* model, const lowbit_chat_message* messages, size_t n_messages,
                                 int add_generation_prompt, char* buf, size_t capacity, size_t* n_bytes) {
    LOWBIT_REQUIRE(model && n_bytes && (buf || capacity == 0), "lowbit_chat_render: NULL argument");
    return guarded([&] {
        const Rendering r = render_model(*model->shared, messages, n_messages, add_generation_prompt != 0, false);
        return copy_out(r.text, buf, capacity, n_bytes, "lowbit_chat_render");
    });
}

lowbit_status lowbit_chat_render_template(const char* template_text, const char* bos_token, const char* eos_token,
                                          const lowbit_chat_message* messages, size_t n_messages,
                                          int add_generation_prompt, char* buf, size_t capacity, size_t* n_bytes) {
    LOWBIT_REQUIRE(template_text && n_bytes && (buf || capacity == 0), "lowbit_chat_render_template: NULL argument");
    return guarded([&] {
        const Recognised t = recognised_or_throw(template_text);
        const Rendering r = render(t, read_messages(messages, n_messages, false), add_generation_prompt != 0,
                                   bos_token ? bos_token : "", eos_token ? eos_token : "");
        return copy_out(r.text, buf, capacity, n_bytes, "lowbit_chat_render_template");
    });
}

lowbit_status lowbit_chat_tokenize(const lowbit_model* model, const lowbit_chat_message* messages, size_t n_messages,
                                   int32_t* ids, size_t capacity, size_t* n_ids) {
    LOWBIT_REQUIRE(model && n_ids && (ids || capacity == 0), "lowbit_chat_tokenize: NULL argument");
    return guarded([&] {
        const ModelShared& m = *model->shared;
        if (!m.tokenizer.impl->vocab().chat_template)
            lowbit::log_message(lowbit::LogLevel::Warn, "the model has no chat template (tokenizer.chat_template); "
                                                        "using the built-in one of its architecture");
        const Rendering r = render_model(m, messages, n_messages, true, true);
        std::vector<int32_t> out = m.tokenizer.impl->encode(r.text, true, true, r.spans);
        const int32_t bos = m.tokenizer.impl->vocab().bos;
        size_t skip = 0;   // exactly one BOS (a template that renders it plus add_bos)
        while (bos >= 0 && out.size() - skip >= 2 && out[skip] == bos && out[skip + 1] == bos) ++skip;
        out.erase(out.begin(), out.begin() + std::ptrdiff_t(skip));
        *n_ids = out.size();
        if (out.size() > capacity)
            return fail(LOWBIT_ERR_BUFFER, str("lowbit_chat_tokenize: ", out.size(), " ids do not fit in ", capacity));
        std::copy(out.begin(), out.end(), ids);
        return LOWBIT_OK;
    });
}

}  // extern "C"
