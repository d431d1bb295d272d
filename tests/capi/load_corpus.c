/* load_corpus.c: lowbit_model_load on each file given (tests/test_capi_model.py, bench/sanitize.sh).
 * prints one line per file: "<status>\t<last error, newlines as spaces>". A file that loads (none
 * should) also gets a session and one evaluated token. Exit 0 unless something crashed. */
#include <stdio.h>
#include <string.h>

#include "lowbit.h"

static int progress(float fraction, void* user_data) {
    float* last = (float*)user_data;
    if (fraction < *last) return 0;   /* progress must not go back */
    *last = fraction;
    return 1;
}

int main(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        float last = 0.0f;
        lowbit_model_params mp = lowbit_model_default();
        mp.progress = progress;
        mp.progress_data = &last;
        mp.n_ctx = 64;
        lowbit_model* model = NULL;
        lowbit_status s = lowbit_model_load(argv[i], &mp, &model);
        char message[4096];
        snprintf(message, sizeof message, "%s", lowbit_last_error());
        for (char* c = message; *c; ++c)
            if (*c == '\n' || *c == '\t') *c = ' ';
        if (s == LOWBIT_OK) {
            lowbit_session* session = NULL;
            int32_t token = 0;
            if (lowbit_session_new(model, NULL, &session) == LOWBIT_OK) lowbit_session_eval(session, &token, 1, NULL);
            lowbit_session_free(session);
        }
        lowbit_model_free(model);
        printf("%d\t%s\n", (int)s, message);
    }
    return 0;
}
