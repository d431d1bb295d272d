/* tokenize_sample.c: the C API from C99 (tests/test_capi.py builds and runs it).
 *   tokenize_sample MODEL.gguf TEXT_FILE SEED
 * prints: the ids of the text (add_special, parse_special), "roundtrip 1" when detokenize gives
 * the text back, then 64 seeded draws from a fixed logits row with a growing history. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lowbit.h"

static int check(lowbit_status s, const char* what) {
    if (s != LOWBIT_OK) {
        fprintf(stderr, "%s failed (%d): %s\n", what, (int)s, lowbit_last_error());
        exit(3);
    }
    return 0;
}

int main(int argc, char** argv) {
    if (argc != 4) return 2;
    FILE* f = fopen(argv[2], "rb");
    if (!f) return 2;
    static char text[1 << 20];
    size_t len = fread(text, 1, sizeof text, f);
    fclose(f);

    lowbit_tokenizer* tok = NULL;
    check(lowbit_tokenizer_open(argv[1], &tok), "lowbit_tokenizer_open");
    size_t n_ids = 0;
    lowbit_status s = lowbit_tokenize(tok, text, len, 1, 1, NULL, 0, &n_ids);   /* ask for the size */
    if (s != LOWBIT_ERR_BUFFER && s != LOWBIT_OK) check(s, "lowbit_tokenize (size)");
    int32_t* ids = malloc(n_ids * sizeof *ids + 1);
    check(lowbit_tokenize(tok, text, len, 1, 1, ids, n_ids, &n_ids), "lowbit_tokenize");
    for (size_t i = 0; i < n_ids; ++i) printf("%s%d", i ? "," : "ids ", ids[i]);
    printf("\n");
    size_t n_bytes = 0;
    char* back = malloc(len + 64);
    /* the BOS a vocabulary adds is not part of the text */
    size_t skip = (n_ids && ids[0] == lowbit_tokenizer_bos(tok)) ? 1 : 0;
    check(lowbit_detokenize(tok, ids + skip, n_ids - skip, 1, back, len + 64, &n_bytes), "lowbit_detokenize");
    printf("roundtrip %d\n", n_bytes == len && memcmp(back, text, len) == 0);

    lowbit_sampling_params p = lowbit_sampling_default();
    p.seed = atoll(argv[3]);
    p.repetition_penalty = 1.3;
    p.repeat_last_n = 8;
    lowbit_sampler* sampler = NULL;
    check(lowbit_sampler_new(&p, &sampler), "lowbit_sampler_new");
    enum { N_VOCAB = 5000, N_DRAWS = 64 };
    static float logits[N_VOCAB];
    for (int i = 0; i < N_VOCAB; ++i) logits[i] = (float)((i * 7919 % 1000) / 100.0 - 5.0);
    int32_t history[N_DRAWS];
    printf("draws");
    for (int i = 0; i < N_DRAWS; ++i) {
        check(lowbit_sample(sampler, logits, N_VOCAB, history, (size_t)i, &history[i]), "lowbit_sample");
        printf("%s%d", i ? "," : " ", history[i]);
    }
    printf("\n");
    /* OpenAI's fields on a second sampler of the same seed */
    lowbit_sampler* openai = NULL;
    check(lowbit_sampler_new(&p, &openai), "lowbit_sampler_new");
    const int32_t bias_ids[2] = {3, 11};
    const double bias_values[2] = {2.5, -1.0};
    check(lowbit_sampler_set_openai(openai, 0.7, 0.4, bias_ids, bias_values, 2), "lowbit_sampler_set_openai");
    printf("draws_openai");
    for (int i = 0; i < N_DRAWS; ++i) {
        check(lowbit_sample(openai, logits, N_VOCAB, history, (size_t)i, &history[i]), "lowbit_sample");
        printf("%s%d", i ? "," : " ", history[i]);
    }
    printf("\n");
    s = lowbit_sampler_set_openai(openai, 0.0, 0.0, NULL, NULL, 0);
    printf("openai_after_draw %d\n", (int)s);
    lowbit_sampler_free(openai);
    lowbit_sampler* fresh = NULL;
    check(lowbit_sampler_new(&p, &fresh), "lowbit_sampler_new");
    s = lowbit_sampler_set_openai(fresh, 2.5, 0.0, NULL, NULL, 0);
    printf("bad_openai %d %s\n", (int)s, lowbit_last_error());
    lowbit_sampler_free(fresh);
    p.top_p = 2.0;
    lowbit_sampler* bad = NULL;
    s = lowbit_sampler_new(&p, &bad);
    printf("bad_params %d %s\n", (int)s, lowbit_last_error());
    lowbit_tokenizer* missing = NULL;
    s = lowbit_tokenizer_open("/nonexistent.gguf", &missing);
    printf("bad_file %d %d\n", (int)s, missing == NULL);
    lowbit_sampler_free(sampler);
    lowbit_tokenizer_free(tok);
    free(ids);
    free(back);
    return 0;
}
