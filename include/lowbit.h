/* lowbit.h: the C API of lowbit (C99; opaque handles, no C++ types). Link with -llowbit.
 *
 * Covers: the tokenizer of a GGUF file (llama.cpp-exact SPM and byte-level BPE), the token sampler
 * (the same code and seeded draws as lowbit.runtime.sampling), models and sessions (load with a
 * progress callback, evaluate, generate with a per-token callback, abort between layers, memory
 * report), chat templates (the ones lowbit recognises, rendered in C++) and a log sink.
 *
 * Errors: every function that can fail returns a lowbit_status; LOWBIT_OK is 0. The text of the
 * last failure is lowbit_last_error(), kept per thread (valid until that thread's next call).
 * No function aborts the process or lets an exception out.
 *
 * Threads:
 *   - a model may be shared by many sessions across threads (its weights are read-only), and
 *     lowbit_model_* / lowbit_chat_* / tokenizer calls on it may run on many threads at once;
 *   - a session is used by ONE thread at a time (eval, generate, truncate, memory, free): give
 *     each thread its own session. Exception: lowbit_session_cancel may come from any thread,
 *     and the abort callback runs on the thread that evaluates;
 *   - a sampler holds its random state: one thread at a time per sampler;
 *   - lowbit_set_log may be called from any thread; the sink is called from any thread (one
 *     message at a time).
 *
 * Memory: every handle comes from a lowbit_*_open / _load / _new call and is released by its
 * lowbit_*_free (NULL is accepted). Output buffers belong to the caller: a call that needs more
 * room than `capacity` returns LOWBIT_ERR_BUFFER and stores the size it needs. */
#ifndef LOWBIT_H
#define LOWBIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define LOWBIT_API __attribute__((visibility("default")))
#else
#define LOWBIT_API
#endif

typedef enum lowbit_status {
    LOWBIT_OK = 0,
    LOWBIT_ERR_ARGUMENT = 1,   /* a bad argument: NULL pointer, id out of range, bad parameter */
    LOWBIT_ERR_FILE = 2,       /* the file cannot be opened or mapped */
    LOWBIT_ERR_FORMAT = 3,     /* the file is no valid GGUF, or its vocabulary is unusable */
    LOWBIT_ERR_BUFFER = 4,     /* the output buffer is too small; the size needed was stored */
    LOWBIT_ERR_MEMORY = 5,     /* out of memory */
    LOWBIT_ERR_INTERNAL = 6,   /* anything else (a bug: please report it with the message) */
    LOWBIT_ERR_CANCELLED = 7,  /* a cancel, an abort callback or a progress callback stopped the call */
    LOWBIT_ERR_TEMPLATE = 8    /* the chat template is not one the C API renders (or rejects the messages) */
} lowbit_status;

/* The message of this thread's last failure ("" after a success). */
LOWBIT_API const char* lowbit_last_error(void);

/* ---- tokenizer ------------------------------------------------------------------------------ */

typedef struct lowbit_tokenizer lowbit_tokenizer;

/* The vocabulary of a GGUF file (tokenizer.ggml.*); the file is not kept open. */
LOWBIT_API lowbit_status lowbit_tokenizer_open(const char* gguf_path, lowbit_tokenizer** out);
LOWBIT_API void lowbit_tokenizer_free(lowbit_tokenizer* tok);

LOWBIT_API int32_t lowbit_tokenizer_n_tokens(const lowbit_tokenizer* tok);
/* The BOS / EOS ids, -1 when the vocabulary has none. */
LOWBIT_API int32_t lowbit_tokenizer_bos(const lowbit_tokenizer* tok);
LOWBIT_API int32_t lowbit_tokenizer_eos(const lowbit_tokenizer* tok);
/* 1 when the id ends generation (eos, eot, <|im_end|>, <end_of_turn>...), else 0. */
LOWBIT_API int lowbit_tokenizer_is_eog(const lowbit_tokenizer* tok, int32_t id);

/* Token ids of `text` (UTF-8, `text_len` bytes) as llama.cpp's llama_tokenize: add_special adds
 * BOS/EOS per the vocabulary, parse_special turns control-token texts into their ids. Stores the
 * count in *n_ids; ids may be NULL when capacity is 0 (ask for the size first). */
LOWBIT_API lowbit_status lowbit_tokenize(const lowbit_tokenizer* tok, const char* text, size_t text_len,
                                         int add_special, int parse_special, int32_t* ids, size_t capacity,
                                         size_t* n_ids);

/* The bytes of `ids` (llama.cpp's llama_detokenize; special: render control tokens). Not
 * NUL-terminated; stores the byte count in *n_bytes. */
LOWBIT_API lowbit_status lowbit_detokenize(const lowbit_tokenizer* tok, const int32_t* ids, size_t n_ids,
                                           int special, char* buf, size_t capacity, size_t* n_bytes);

/* ---- sampler -------------------------------------------------------------------------------- */

typedef struct lowbit_sampling_params {
    double temperature;          /* <= 0: greedy */
    int32_t top_k;               /* 0: off */
    double top_p;                /* in (0, 1]; 1: off */
    double min_p;                /* in [0, 1]; 0: off */
    double repetition_penalty;   /* > 0; 1: off */
    int32_t repeat_last_n;       /* tokens of history the penalty sees; -1: all */
    int64_t seed;                /* >= 0: reproducible draws (numpy's default_rng(seed)); -1: random */
} lowbit_sampling_params;

/* temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no penalty (1.0, last 64), random seed. */
LOWBIT_API lowbit_sampling_params lowbit_sampling_default(void);

typedef struct lowbit_sampler lowbit_sampler;

LOWBIT_API lowbit_status lowbit_sampler_new(const lowbit_sampling_params* params, lowbit_sampler** out);
LOWBIT_API void lowbit_sampler_free(lowbit_sampler* sampler);

/* OpenAI's sampling fields (beside lowbit_sampling_params, whose layout stays as it is); call
 * before the sampler's first lowbit_sample. presence_penalty / frequency_penalty in [-2, 2]
 * (0: off) over the tokens this sampler draws: x -= count * frequency + (count > 0) * presence;
 * n_bias pairs (bias_ids[i], bias_values[i] in [-100, 100]) added to the logits first (NULL
 * arrays when n_bias is 0; an id outside the row: LOWBIT_ERR_ARGUMENT from lowbit_sample).
 * Chain order and rules: lowbit.runtime.sampling. LOWBIT_ERR_ARGUMENT for a value out of range. */
LOWBIT_API lowbit_status lowbit_sampler_set_openai(lowbit_sampler* sampler, double presence_penalty,
                                                   double frequency_penalty, const int32_t* bias_ids,
                                                   const double* bias_values, size_t n_bias);

/* One token from a row of n_vocab logits; `history` = the tokens so far (prompt and generated),
 * n_history of them (may be 0). LOWBIT_ERR_ARGUMENT for NaN logits or a row with no finite one. */
LOWBIT_API lowbit_status lowbit_sample(lowbit_sampler* sampler, const float* logits, size_t n_vocab,
                                       const int32_t* history, size_t n_history, int32_t* token);

/* ---- log --------------------------------------------------------------------------------- */

typedef enum lowbit_log_level { LOWBIT_LOG_DEBUG = 0, LOWBIT_LOG_INFO = 1, LOWBIT_LOG_WARN = 2, LOWBIT_LOG_ERROR = 3 } lowbit_log_level;
typedef void (*lowbit_log_fn)(int level, const char* message, void* user_data);

/* Where the library's messages go (process-wide; NULL: nowhere, the default). Once this returns,
 * the previous sink is never called again. The sink must not block for long. */
LOWBIT_API void lowbit_set_log(lowbit_log_fn sink, void* user_data);

/* ---- model ------------------------------------------------------------------------------- */

typedef struct lowbit_model lowbit_model;

/* fraction in [0, 1]; return 0 to stop the load (it then returns LOWBIT_ERR_CANCELLED). */
typedef int (*lowbit_progress_fn)(float fraction, void* user_data);

typedef struct lowbit_model_params {
    int64_t n_ctx;                 /* the sessions' default context; 0: min(training context, 4096) */
    lowbit_progress_fn progress;   /* NULL: none; called on the loading thread */
    void* progress_data;
} lowbit_model_params;

LOWBIT_API lowbit_model_params lowbit_model_default(void);

/* Maps the GGUF file, checks every tensor the architecture needs and reads the vocabulary.
 * LOWBIT_ERR_FILE (cannot open), LOWBIT_ERR_FORMAT (not a valid GGUF / model), LOWBIT_ERR_CANCELLED. */
LOWBIT_API lowbit_status lowbit_model_load(const char* gguf_path, const lowbit_model_params* params,
                                           lowbit_model** out);
/* Sessions keep the weights alive: the model may be freed before its sessions. */
LOWBIT_API void lowbit_model_free(lowbit_model* model);

/* The model's tokenizer: borrowed, valid until lowbit_model_free. */
LOWBIT_API const lowbit_tokenizer* lowbit_model_tokenizer(const lowbit_model* model);
LOWBIT_API int32_t lowbit_model_n_vocab(const lowbit_model* model);
LOWBIT_API int64_t lowbit_model_n_ctx_train(const lowbit_model* model);
LOWBIT_API const char* lowbit_model_architecture(const lowbit_model* model);   /* "llama", "gemma3"... */

/* ---- session ----------------------------------------------------------------------------- */

typedef struct lowbit_session lowbit_session;

typedef struct lowbit_session_params {
    int64_t n_ctx;       /* KV cache capacity in tokens; 0: the model's n_ctx */
    int32_t n_threads;   /* 0: the number of online CPUs */
    int64_t n_batch;     /* tokens per prefill pass; 0: 512 */
    const char* kv_type; /* "f16" or "q8_0"; NULL: "f16" */
} lowbit_session_params;

LOWBIT_API lowbit_session_params lowbit_session_default(void);

/* A conversation on the model: its own KV cache, activations and thread pool. */
LOWBIT_API lowbit_status lowbit_session_new(lowbit_model* model, const lowbit_session_params* params,
                                            lowbit_session** out);
LOWBIT_API void lowbit_session_free(lowbit_session* session);

LOWBIT_API int64_t lowbit_session_n_ctx(const lowbit_session* session);
LOWBIT_API int64_t lowbit_session_n_past(const lowbit_session* session);   /* tokens in the KV cache (-1: error) */

/* Appends `tokens` to the KV cache; logits (may be NULL): the n_vocab logits of the last token.
 * LOWBIT_ERR_ARGUMENT for a bad id or a context overflow; LOWBIT_ERR_CANCELLED when cancelled
 * (the cache then holds the prefill passes that completed: see lowbit_session_n_past). */
LOWBIT_API lowbit_status lowbit_session_eval(lowbit_session* session, const int32_t* tokens, size_t n_tokens,
                                             float* logits);
/* Drops cached positions >= n_keep. */
LOWBIT_API lowbit_status lowbit_session_truncate(lowbit_session* session, int64_t n_keep);

/* Return nonzero to stop the running eval / generate. Polled before each prefill pass, between
 * layers and between generated tokens, on the evaluating thread. NULL removes it. The stop
 * latency is about one layer of one pass of n_batch tokens (SmolLM2-135M on 2 busy cores:
 * 15-25 ms at n_batch 128, 40-55 ms at 256, 90-145 ms at 512): lower n_batch for a faster stop. */
typedef int (*lowbit_abort_fn)(void* user_data);
LOWBIT_API void lowbit_session_set_abort(lowbit_session* session, lowbit_abort_fn abort_cb, void* user_data);
/* Stops the eval / generate running on the session (any thread; it returns within one layer).
 * Each eval / generate clears the request when it starts: a cancel with nothing running is dropped. */
LOWBIT_API void lowbit_session_cancel(lowbit_session* session);

/* ---- generation -------------------------------------------------------------------------- */

/* One generated token and its text: whole UTF-8 characters only (an incomplete one is held back
 * until it completes); token -1 carries the text left at the end (an incomplete character as
 * U+FFFD). text is not NUL-terminated. Return nonzero to stop. */
typedef int (*lowbit_token_fn)(int32_t token, const char* text, size_t text_len, void* user_data);

typedef enum lowbit_finish {
    LOWBIT_FINISH_LENGTH = 0,     /* max_tokens reached */
    LOWBIT_FINISH_EOS = 1,        /* an end-of-generation token (not passed to the callback) */
    LOWBIT_FINISH_STOPPED = 2,    /* the token callback returned nonzero */
    LOWBIT_FINISH_CANCELLED = 3,  /* lowbit_session_cancel or the abort callback */
    LOWBIT_FINISH_CONTEXT = 4     /* the KV cache is full */
} lowbit_finish;

typedef struct lowbit_generate_params {
    lowbit_sampling_params sampling;
    int32_t max_tokens;           /* >= 0 */
    lowbit_token_fn on_token;     /* NULL: none */
    void* user_data;
} lowbit_generate_params;

typedef struct lowbit_generation {
    lowbit_finish finish;
    int32_t prompt_tokens, cached_prompt_tokens, generated_tokens;
    double prefill_seconds, decode_seconds;
} lowbit_generation;

/* greedy (temperature 0), 256 tokens, no callback. */
LOWBIT_API lowbit_generate_params lowbit_generate_default(void);

/* Continues `prompt` (the KV cache's common prefix with it is reused, as Python's generate does)
 * until a finish reason; result (may be NULL) gets the counts. A cancel is LOWBIT_OK with
 * finish LOWBIT_FINISH_CANCELLED. */
LOWBIT_API lowbit_status lowbit_session_generate(lowbit_session* session, const int32_t* prompt, size_t n_prompt,
                                                 const lowbit_generate_params* params, lowbit_generation* result);
/* The same from text, tokenized as Python's Model.generate does (BOS per the vocabulary, special
 * token texts not parsed). */
LOWBIT_API lowbit_status lowbit_session_generate_text(lowbit_session* session, const char* prompt,
                                                      const lowbit_generate_params* params,
                                                      lowbit_generation* result);

/* ---- chat templates ---------------------------------------------------------------------- */

typedef struct lowbit_chat_message {
    const char* role;      /* "system", "user", "assistant" or "tool" (UTF-8, NUL-terminated) */
    const char* content;
} lowbit_chat_message;

/* The C API renders the templates it recognises from their text: ChatML (with or without a default
 * system prompt, as SmolLM2's and Qwen2's), Llama 3, Gemma (2 and 3), Phi-3, and lowbit's built-in
 * ones (used, as in Python, when the file has no tokenizer.chat_template: gemma3 -> Gemma). For any
 * other template: LOWBIT_ERR_TEMPLATE, "template not recognised: use Python's jinja2 renderer". */

/* The name of the model's template form ("chatml", "llama3", "gemma", "phi3"), or LOWBIT_ERR_TEMPLATE. */
LOWBIT_API lowbit_status lowbit_chat_template_name(const lowbit_model* model, const char** name);
/* The rendered conversation (UTF-8, not NUL-terminated; the same text as lowbit's jinja2 renderer). */
LOWBIT_API lowbit_status lowbit_chat_render(const lowbit_model* model, const lowbit_chat_message* messages,
                                            size_t n_messages, int add_generation_prompt, char* buf,
                                            size_t capacity, size_t* n_bytes);
/* The same for any template text with the given bos / eos token texts (NULL: ""). */
LOWBIT_API lowbit_status lowbit_chat_render_template(const char* template_text, const char* bos_token,
                                                     const char* eos_token, const lowbit_chat_message* messages,
                                                     size_t n_messages, int add_generation_prompt, char* buf,
                                                     size_t capacity, size_t* n_bytes);
/* Token ids of the conversation with the generation prompt, as Python's Model.chat_ids: special
 * tokens parsed in the template's own text only (a '<|im_end|>' typed in a message is text), one BOS. */
LOWBIT_API lowbit_status lowbit_chat_tokenize(const lowbit_model* model, const lowbit_chat_message* messages,
                                              size_t n_messages, int32_t* ids, size_t capacity, size_t* n_ids);

/* ---- memory ------------------------------------------------------------------------------ */

typedef struct lowbit_memory {
    uint64_t weights_bytes;          /* shared by every session of the model: count it once */
    uint64_t weights_copied_bytes;   /* part of weights_bytes held as fused copies */
    uint64_t kv_bytes;               /* this session's KV cache */
    uint64_t scratch_bytes;          /* this session's activations */
    uint64_t total_bytes;            /* weights + kv + scratch */
    uint64_t process_peak_rss_bytes; /* the process's peak resident set (VmHWM) */
    int64_t kv_cells, n_ctx, n_past;
    char kv_type[16];                /* "f16" or "q8_0", NUL-terminated */
} lowbit_memory;

LOWBIT_API lowbit_status lowbit_session_memory(const lowbit_session* session, lowbit_memory* out);

#ifdef __cplusplus
}
#endif

#endif /* LOWBIT_H */
