/* threads.c: one model, N_THREADS threads, each with its own session, generating at once
 * (tests/test_capi_model.py; bench/sanitize.sh runs it under ThreadSanitizer).
 *   threads MODEL.gguf N_THREADS N_TOKENS
 * Each thread also tokenizes, renders its chat and reads its memory report while the others
 * decode, and the log sink (set before the load) counts messages under its own lock. Afterwards
 * every prompt is generated again, alone, on one session: the ids must be the same.
 * prints per thread "thread T ok|MISMATCH <ids>", then "log_messages N". */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lowbit.h"

#define MAX_THREADS 8
#define MAX_TOKENS 256

static const char* const PROMPTS[MAX_THREADS] = {
    "The capital of France is", "Write a haiku about the sea.", "def fibonacci(n):", "Once upon a time",
    "List three colours:", "2 + 2 =", "The best way to learn C is", "Water boils at"};

static lowbit_model* model;
static int n_tokens;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static int log_messages;

typedef struct {
    int index;
    int32_t ids[MAX_TOKENS];
    int n;
    lowbit_status status;
} job;

static void log_sink(int level, const char* message, void* user_data) {
    (void)level; (void)message; (void)user_data;
    pthread_mutex_lock(&log_lock);
    ++log_messages;
    pthread_mutex_unlock(&log_lock);
}

static int collect(int32_t token, const char* text, size_t len, void* user_data) {
    (void)text; (void)len;
    job* j = (job*)user_data;
    if (token >= 0 && j->n < MAX_TOKENS) j->ids[j->n++] = token;
    return 0;
}

static lowbit_status generate(lowbit_session* s, job* j) {
    lowbit_generate_params p = lowbit_generate_default();
    p.max_tokens = n_tokens;
    p.on_token = collect;
    p.user_data = j;
    j->n = 0;
    return lowbit_session_generate_text(s, PROMPTS[j->index], &p, NULL);
}

static void* run(void* arg) {
    job* j = (job*)arg;
    lowbit_session_params sp = lowbit_session_default();
    lowbit_session* s = NULL;
    lowbit_memory mem;
    int32_t ids[512];
    size_t n_ids = 0;
    char text[4096];
    lowbit_chat_message message = {"user", PROMPTS[j->index]};
    sp.n_ctx = 256;
    sp.n_threads = 1;
    j->status = lowbit_session_new(model, &sp, &s);
    if (j->status == LOWBIT_OK) j->status = generate(s, j);
    if (j->status == LOWBIT_OK)
        j->status = lowbit_tokenize(lowbit_model_tokenizer(model), PROMPTS[j->index], strlen(PROMPTS[j->index]), 1, 0,
                                    ids, 512, &n_ids);
    if (j->status == LOWBIT_OK) j->status = lowbit_chat_render(model, &message, 1, 1, text, sizeof text, &n_ids);
    if (j->status == LOWBIT_OK) j->status = lowbit_session_memory(s, &mem);
    if (j->status != LOWBIT_OK) fprintf(stderr, "thread %d: %s\n", j->index, lowbit_last_error());
    lowbit_session_free(s);
    return NULL;
}

int main(int argc, char** argv) {
    if (argc != 4) return 2;
    int n_threads = atoi(argv[2]);
    n_tokens = atoi(argv[3]);
    if (n_threads < 1 || n_threads > MAX_THREADS || n_tokens < 1 || n_tokens > MAX_TOKENS) return 2;
    lowbit_set_log(log_sink, NULL);
    if (lowbit_model_load(argv[1], NULL, &model) != LOWBIT_OK) {
        fprintf(stderr, "load: %s\n", lowbit_last_error());
        return 3;
    }
    static job jobs[MAX_THREADS], alone[MAX_THREADS];
    pthread_t threads[MAX_THREADS];
    for (int t = 0; t < n_threads; ++t) {
        jobs[t].index = t;
        pthread_create(&threads[t], NULL, run, &jobs[t]);
    }
    for (int t = 0; t < n_threads; ++t) pthread_join(threads[t], NULL);

    lowbit_session_params sp = lowbit_session_default();
    lowbit_session* s = NULL;
    sp.n_ctx = 256;
    sp.n_threads = 1;
    if (lowbit_session_new(model, &sp, &s) != LOWBIT_OK) return 3;
    int failures = 0;
    for (int t = 0; t < n_threads; ++t) {
        alone[t].index = t;
        lowbit_session_truncate(s, 0);
        lowbit_status st = generate(s, &alone[t]);
        int same = st == LOWBIT_OK && jobs[t].status == LOWBIT_OK && jobs[t].n == alone[t].n &&
                   memcmp(jobs[t].ids, alone[t].ids, (size_t)jobs[t].n * sizeof(int32_t)) == 0;
        failures += !same;
        printf("thread %d %s", t, same ? "ok" : "MISMATCH");
        for (int i = 0; i < jobs[t].n; ++i) printf("%s%d", i ? "," : " ", (int)jobs[t].ids[i]);
        printf("\n");
    }
    lowbit_session_free(s);
    lowbit_model_free(model);
    lowbit_set_log(NULL, NULL);
    printf("log_messages %d\n", log_messages);
    return failures ? 1 : 0;
}
