/* lowbit.h: the C API of lowbit (C99; opaque handles, no C++ types).
 *
 * This first part covers what runs without a model: the tokenizer of a GGUF file (llama.cpp-exact
 * SPM and byte-level BPE, read from the file; no Python involved) and the token sampler (the same
 * code and the same seeded draws as lowbit.runtime.sampling). Link with -llowbit.
 *
 * Errors: every function that can fail returns a lowbit_status; LOWBIT_OK is 0. The text of the
 * last failure is lowbit_last_error(), kept per thread (valid until that thread's next call).
 * No function aborts the process or lets an exception out.
 *
 * Threads: a tokenizer may be used by many threads at once. A sampler holds its random state: one
 * thread at a time per sampler (give each generation its own).
 *
 * Memory: every handle comes from a lowbit_*_open / lowbit_*_new call and is released by its
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
    LOWBIT_ERR_INTERNAL = 6    /* anything else (a bug: please report it with the message) */
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

/* One token from a row of n_vocab logits; `history` = the tokens so far (prompt and generated),
 * n_history of them (may be 0). LOWBIT_ERR_ARGUMENT for NaN logits or a row with no finite one. */
LOWBIT_API lowbit_status lowbit_sample(lowbit_sampler* sampler, const float* logits, size_t n_vocab,
                                       const int32_t* history, size_t n_history, int32_t* token);

#ifdef __cplusplus
}
#endif

#endif /* LOWBIT_H */
