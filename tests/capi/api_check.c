/* api_check.c: the C API's contracts one by one on a real model (tests/test_capi_model.py).
 *   api_check MODEL.gguf
 * prints "name value" lines the test compares with the Python API. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lowbit.h"

static int infos;
static float fractions[64];
static int n_fractions;

static void log_sink(int level, const char* message, void* user_data) {
    (void)user_data;
    if (level == LOWBIT_LOG_INFO && strstr(message, "loaded ")) ++infos;
}

static int record_progress(float fraction, void* user_data) {
    if (n_fractions < 64) fractions[n_fractions++] = fraction;
    return user_data == NULL || fraction < *(float*)user_data;   /* stop once past the limit */
}

static int print_token(int32_t token, const char* text, size_t len, void* user_data) {
    (void)text; (void)len; (void)user_data;
    if (token >= 0) printf(" %d", (int)token);
    return 0;
}

static int stop_after(int32_t token, const char* text, size_t len, void* user_data) {
    (void)token; (void)text; (void)len;
    return --*(int*)user_data == 0;   /* nonzero: stop */
}

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    lowbit_set_log(log_sink, NULL);
    lowbit_model_params mp = lowbit_model_default();
    mp.progress = record_progress;
    float limit = 0.3f;
    mp.progress_data = &limit;
    lowbit_model* model = NULL;
    lowbit_status s = lowbit_model_load(argv[1], &mp, &model);
    printf("abort_load %d %s\n", (int)s, lowbit_last_error());
    printf("abort_load_model_null %d\n", model == NULL);

    n_fractions = 0;
    mp.progress_data = NULL;
    s = lowbit_model_load(argv[1], &mp, &model);
    int monotonic = 1;
    for (int i = 1; i < n_fractions; ++i) monotonic &= fractions[i] >= fractions[i - 1];
    printf("load %d progress_calls %d monotonic %d first %.3f last %.3f infos %d\n", (int)s, n_fractions, monotonic,
           fractions[0], fractions[n_fractions - 1], infos);
    if (s != LOWBIT_OK) return 3;
    printf("arch %s n_vocab %d\n", lowbit_model_architecture(model), (int)lowbit_model_n_vocab(model));
    const char* form = NULL;
    s = lowbit_chat_template_name(model, &form);
    printf("template %d %s\n", (int)s, s == LOWBIT_OK ? form : lowbit_last_error());

    lowbit_session_params sp = lowbit_session_default();
    sp.n_ctx = 128;
    sp.kv_type = "q8_0";
    lowbit_session* session = NULL;
    if (lowbit_session_new(model, &sp, &session) != LOWBIT_OK) return 3;
    lowbit_model_free(model);   /* the session keeps the weights */

    const int32_t ids[4] = {1, 2, 3, 4};
    float* logits = malloc(sizeof(float) * 300000);
    s = lowbit_session_eval(session, ids, 4, logits);
    printf("eval %d n_past %lld logits %.5f %.5f %.5f\n", (int)s, (long long)lowbit_session_n_past(session), logits[0],
           logits[1], logits[2]);
    const int32_t bad = 1 << 30;
    s = lowbit_session_eval(session, &bad, 1, NULL);
    printf("bad_token %d %s\n", (int)s, lowbit_last_error());
    s = lowbit_session_truncate(session, 2);
    printf("truncate %d n_past %lld\n", (int)s, (long long)lowbit_session_n_past(session));
    lowbit_memory mem;
    s = lowbit_session_memory(session, &mem);
    printf("memory %d weights %llu kv %llu scratch %llu total %llu rss %llu kv_type %s n_ctx %lld n_past %lld\n", (int)s,
           (unsigned long long)mem.weights_bytes, (unsigned long long)mem.kv_bytes,
           (unsigned long long)mem.scratch_bytes, (unsigned long long)mem.total_bytes,
           (unsigned long long)mem.process_peak_rss_bytes, mem.kv_type, (long long)mem.n_ctx, (long long)mem.n_past);

    int32_t long_prompt[200];
    for (int i = 0; i < 200; ++i) long_prompt[i] = 5;
    lowbit_generate_params gp = lowbit_generate_default();
    s = lowbit_session_generate(session, long_prompt, 200, &gp, NULL);
    printf("overflow %d %s\n", (int)s, lowbit_last_error());
    gp.sampling.top_p = 2.0;
    s = lowbit_session_generate(session, ids, 4, &gp, NULL);
    printf("bad_sampling %d %s\n", (int)s, lowbit_last_error());
    lowbit_session_truncate(session, 0);
    gp = lowbit_generate_default();
    gp.sampling = lowbit_sampling_default();   /* temperature 0.8, top-k 40, top-p 0.95, min-p 0.05 */
    gp.sampling.seed = 7;
    gp.max_tokens = 20;
    gp.on_token = print_token;
    printf("seeded");
    lowbit_generation g;
    s = lowbit_session_generate_text(session, "Once upon a time", &gp, &g);
    printf("\nseeded_result %d finish %d generated %d prompt %d\n", (int)s, (int)g.finish, g.generated_tokens,
           g.prompt_tokens);
    int budget = 3;
    gp.on_token = stop_after;
    gp.user_data = &budget;
    s = lowbit_session_generate_text(session, "Once upon a time", &gp, &g);
    printf("stopped %d finish %d generated %d cached %d\n", (int)s, (int)g.finish, g.generated_tokens,
           g.cached_prompt_tokens);
    s = lowbit_session_new(NULL, NULL, NULL);
    printf("null_args %d\n", (int)s);
    free(logits);
    lowbit_session_free(session);
    lowbit_set_log(NULL, NULL);
    return 0;
}
