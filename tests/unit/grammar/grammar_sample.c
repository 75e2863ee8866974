/*
 * Bulk structured-output sampling for the property test
 * (tests/e2e/grammar/property.test.mjs validates what this prints with ajv).
 *
 *   grammar_sample MODEL.gguf SCHEMAS.jsonl N_PER_SCHEMA SEED MAX_TOKENS
 *
 * For each schema (one JSON per line), N outputs: every step draws random
 * logits (a random-weight model's output layer, seeded), masks them with the
 * schema's grammar over MODEL's vocabulary, samples at temperature 1 and
 * feeds the token back, until an end-of-generation token or the grammar is
 * finished ("stop") or MAX_TOKENS ("length"). Prints one JSON line per
 * output: {"schema": i, "finish": "stop"|"length", "text": "..."}; a schema
 * that fails to compile prints {"schema": i, "error": "..."}. Exit 1 on a
 * matcher failure (which the test counts as a bug).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/grammar.h"
#include "llorch/json.h"
#include "llorch/sampler.h"
#include "llorch/tokenizer.h"

static uint64_t rng_state;

static double rng_unit(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (double)(rng_state >> 11) * (1.0 / 9007199254740992.0);
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: grammar_sample MODEL.gguf SCHEMAS.jsonl N SEED MAX_TOKENS\n");
    return 2;
  }
  int n_per = atoi(argv[3]), max_tokens = atoi(argv[5]);
  rng_state = strtoull(argv[4], NULL, 10) * 0x9E3779B97F4A7C15ull + 1;
  llorch_errmsg em = {{0}};
  llorch_tokenizer *tok = NULL;
  llorch_grammar_vocab *v = NULL;
  if (llorch_tokenizer_load_file(&tok, argv[1], &em) < 0 ||
      llorch_grammar_vocab_init(&v, tok, &em) < 0) {
    fprintf(stderr, "grammar_sample: %s\n", em.text);
    return 2;
  }
  uint32_t nv = (uint32_t)llorch_tokenizer_n_vocab(tok);
  float *logits = malloc(nv * sizeof *logits);
  uint32_t *mask = malloc((nv + 31) / 32 * sizeof *mask);
  char *piece = malloc(4096);
  FILE *f = fopen(argv[2], "r");
  if (!logits || !mask || !piece || !f) {
    fprintf(stderr, "grammar_sample: cannot open %s or out of memory\n", argv[2]);
    return 2;
  }
  llorch_sampler_params sp;
  llorch_sampler_params_default(&sp);
  sp.temperature = 1.0f;
  char *line = NULL;
  size_t cap = 0;
  int status = 0;
  llorch_jbuf out, text;
  llorch_jbuf_init(&out);
  llorch_jbuf_init(&text);
  for (int idx = 0; getline(&line, &cap, f) > 0 && status == 0; idx++) {
    cJSON *schema = cJSON_Parse(line);
    llorch_grammar *g = NULL;
    if (!schema || llorch_grammar_from_schema(&g, schema, 0, NULL, NULL, 0, &em) < 0) {
      llorch_jbuf_reset(&out);
      llorch_jbuf_cstr(&out, "{\"schema\":");
      llorch_jbuf_int(&out, idx);
      llorch_jbuf_cstr(&out, ",\"error\":");
      llorch_jbuf_str(&out, schema ? em.text : "not JSON");
      llorch_jbuf_cstr(&out, "}\n");
      fwrite(out.data, 1, out.len, stdout);
      cJSON_Delete(schema);
      continue;
    }
    for (int k = 0; k < n_per && status == 0; k++) {
      llorch_grammar_state *st = NULL;
      llorch_sampler *smp = NULL;
      sp.seed = rng_state;
      if (llorch_grammar_state_init(&st, g, v, &em) < 0 ||
          llorch_sampler_init(&smp, &sp, nv, &em) < 0) {
        fprintf(stderr, "grammar_sample: %s\n", em.text);
        return 2;
      }
      llorch_jbuf_reset(&text);
      const char *finish = "length";
      for (int t = 0; t < max_tokens; t++) {
        /* a random model's logits: roughly normal, scale 2 */
        for (uint32_t i = 0; i < nv; i++)
          logits[i] = (float)((rng_unit() + rng_unit() + rng_unit() - 1.5) * 4.0);
        int allowed = llorch_grammar_state_mask(st, mask, &em);
        if (allowed <= 0) {
          fprintf(stderr, "grammar_sample: schema %d: no token allowed after '%.*s' (%s)\n", idx,
                  (int)text.len, text.data ? text.data : "", em.text);
          status = 1;
          break;
        }
        llorch_sample_result r;
        if (llorch_sampler_sample_masked(smp, logits, mask, NULL, 0, &r, &em) < 0 ||
            llorch_grammar_state_accept(st, r.token, &em) < 0) {
          fprintf(stderr, "grammar_sample: schema %d: %s\n", idx, em.text);
          status = 1;
          break;
        }
        if (llorch_tokenizer_is_eog(tok, r.token)) {
          finish = "stop";
          break;
        }
        int n = llorch_token_piece(tok, r.token, 0, piece, 4096);
        if (n > 0 && n <= 4096) llorch_jbuf_raw(&text, piece, (size_t)n);
        if (llorch_grammar_state_finished(st)) {
          finish = "stop";
          break;
        }
      }
      llorch_jbuf_reset(&out);
      llorch_jbuf_cstr(&out, "{\"schema\":");
      llorch_jbuf_int(&out, idx);
      llorch_jbuf_cstr(&out, ",\"finish\":\"");
      llorch_jbuf_cstr(&out, finish);
      llorch_jbuf_cstr(&out, "\",\"text\":");
      llorch_jbuf_strn(&out, text.data ? text.data : "", text.len);
      llorch_jbuf_cstr(&out, "}\n");
      fwrite(out.data, 1, out.len, stdout);
      llorch_grammar_state_free(st);
      llorch_sampler_free(smp);
    }
    llorch_grammar_free(g);
    cJSON_Delete(schema);
  }
  free(line);
  fclose(f);
  llorch_jbuf_free(&out);
  llorch_jbuf_free(&text);
  free(piece);
  free(mask);
  free(logits);
  llorch_grammar_vocab_free(v);
  llorch_tokenizer_free(tok);
  return status;
}
