/* abort_prefill.c: how fast an abort stops a long prefill (tests/test_capi_model.py, bench/sanitize.sh).
 *   abort_prefill MODEL.gguf N_TOKENS N_BATCH MODE     MODE: callback | cancel | generate
 * A worker thread evaluates N_TOKENS prompt tokens (lowbit_session_eval, or lowbit_session_generate
 * for MODE generate). Once the abort callback has been polled 40 times (the prefill is under way),
 * the main thread asks for the stop (callback: the flag the callback returns; cancel and generate:
 * lowbit_session_cancel / the flag) and notes the time; the worker notes when the call returned.
 * prints: status S finish F n_past P polls K latency_ms L layer_ms M (M: the mean time between
 * two polls before the stop, i.e. one layer of one n_batch pass) */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lowbit.h"

static atomic_int polls, stop_flag;
static lowbit_session* session;
static int32_t* tokens;
static size_t n_tokens;
static const char* mode;
static lowbit_status status;
static lowbit_generation gen;
static struct timespec returned_at;

static int abort_cb(void* user_data) {
    (void)user_data;
    atomic_fetch_add(&polls, 1);
    return atomic_load(&stop_flag);
}

static void* worker(void* arg) {
    (void)arg;
    if (strcmp(mode, "generate") == 0) {
        lowbit_generate_params p = lowbit_generate_default();
        p.max_tokens = 4;
        status = lowbit_session_generate(session, tokens, n_tokens, &p, &gen);
    } else {
        status = lowbit_session_eval(session, tokens, n_tokens, NULL);
    }
    clock_gettime(CLOCK_MONOTONIC, &returned_at);
    return NULL;
}

static double ms_between(struct timespec a, struct timespec b) {
    return (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6;
}

int main(int argc, char** argv) {
    if (argc != 5) return 2;
    n_tokens = (size_t)atoi(argv[2]);
    mode = argv[4];
    lowbit_model* model = NULL;
    lowbit_session_params sp = lowbit_session_default();
    sp.n_ctx = (int64_t)n_tokens + 64;
    sp.n_batch = atoi(argv[3]);
    if (lowbit_model_load(argv[1], NULL, &model) != LOWBIT_OK || lowbit_session_new(model, &sp, &session) != LOWBIT_OK) {
        fprintf(stderr, "setup: %s\n", lowbit_last_error());
        return 3;
    }
    tokens = malloc(n_tokens * sizeof *tokens);
    for (size_t i = 0; i < n_tokens; ++i) tokens[i] = (int32_t)(100 + (i * 7919) % 5000);
    lowbit_session_set_abort(session, abort_cb, NULL);

    pthread_t thread;
    struct timespec started_at;
    clock_gettime(CLOCK_MONOTONIC, &started_at);
    pthread_create(&thread, NULL, worker, NULL);
    while (atomic_load(&polls) < 40) {
        struct timespec nap = {0, 200000};
        nanosleep(&nap, NULL);
    }
    struct timespec asked_at;
    clock_gettime(CLOCK_MONOTONIC, &asked_at);
    const int polls_at_ask = atomic_load(&polls);
    if (strcmp(mode, "cancel") == 0) lowbit_session_cancel(session);
    else atomic_store(&stop_flag, 1);
    pthread_join(thread, NULL);
    printf("status %d finish %d n_past %lld polls %d latency_ms %.2f layer_ms %.2f\n", (int)status, (int)gen.finish,
           (long long)lowbit_session_n_past(session), atomic_load(&polls), ms_between(asked_at, returned_at),
           ms_between(started_at, asked_at) / polls_at_ask);
    printf("error %s\n", lowbit_last_error());   /* the main thread's: empty */
    lowbit_session_free(session);
    lowbit_model_free(model);
    free(tokens);
    return 0;
}
