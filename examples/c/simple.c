/* simple.c: load a GGUF model, stream a greedy reply to one chat message, print memory use.
 *
 *   cc -std=c99 -Wall -Werror simple.c -I"$INC" -L"$LIB" -llowbit -Wl,-rpath,"$LIB" -o simple
 *   ./simple smollm2-135m-instruct.gguf "Why is the sky blue?" 64
 *
 * with INC=$(python -c "import lowbit; print(lowbit.get_include())") and
 * LIB=$(python -c "import lowbit, os; print(os.path.dirname(lowbit.get_library()))"). */
#include <stdio.h>
#include <stdlib.h>

#include "lowbit.h"

static int print_piece(int32_t token, const char* text, size_t len, void* user_data) {
    (void)token;
    (void)user_data;
    fwrite(text, 1, len, stdout);   /* whole UTF-8 characters only */
    fflush(stdout);
    return 0;                       /* nonzero would stop the generation */
}

static double mib(uint64_t bytes) { return (double)bytes / (1024.0 * 1024.0); }

int main(int argc, char** argv) {
    lowbit_model* model = NULL;
    lowbit_session* session = NULL;
    int32_t ids[2048];
    size_t n_ids = 0;
    int rc = 1;
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPT [MAX_TOKENS]\n", argv[0]);
        return 2;
    }
    lowbit_chat_message message = {"user", argv[2]};
    lowbit_session_params sp = lowbit_session_default();
    lowbit_generate_params gp = lowbit_generate_default();   /* greedy */
    lowbit_generation gen;
    lowbit_memory mem;
    sp.n_ctx = 2048;
    gp.max_tokens = argc > 3 ? atoi(argv[3]) : 128;
    gp.on_token = print_piece;
    if (lowbit_model_load(argv[1], NULL, &model) != LOWBIT_OK ||
        lowbit_session_new(model, &sp, &session) != LOWBIT_OK ||
        lowbit_chat_tokenize(model, &message, 1, ids, sizeof ids / sizeof ids[0], &n_ids) != LOWBIT_OK ||
        lowbit_session_generate(session, ids, n_ids, &gp, &gen) != LOWBIT_OK ||
        lowbit_session_memory(session, &mem) != LOWBIT_OK) {
        fprintf(stderr, "error: %s\n", lowbit_last_error());
        goto done;
    }
    printf("\n");
    fprintf(stderr, "%d prompt + %d generated tokens (finish %d), %.1f tok/s\n", gen.prompt_tokens,
            gen.generated_tokens, (int)gen.finish,
            gen.decode_seconds > 0 ? (gen.generated_tokens - 1) / gen.decode_seconds : 0.0);
    fprintf(stderr, "memory: weights %.1f MiB, KV cache %.1f MiB (%s, %lld of %lld positions), "
            "scratch %.1f MiB, peak RSS %.1f MiB\n", mib(mem.weights_bytes), mib(mem.kv_bytes), mem.kv_type,
            (long long)mem.n_past, (long long)mem.n_ctx, mib(mem.scratch_bytes), mib(mem.process_peak_rss_bytes));
    rc = 0;
done:
    lowbit_session_free(session);
    lowbit_model_free(model);
    return rc;
}
