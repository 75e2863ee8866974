/*
 * `llorch bench --json-schema FILE`: decoding under a JSON Schema against
 * the same decoding without it, on one model and its own vocabulary.
 *
 * Both runs do what the worker does per token: forward, (mask,) sample at
 * temperature 1, (accept); the unconstrained run samples the same way, so
 * the ratio is the grammar's cost. A sequence whose output completes starts
 * a new output (a fresh grammar state) and keeps decoding at the next
 * positions. Batch 1 and --batch N (8 by default here), alternating
 * constrained and unconstrained runs so both see the same machine load.
 * Printed: schema compile time, vocabulary trie build time, tok/s of each
 * run and the ratio, and the per-token mask time p50/p99 (including cache
 * hits, which is what a decode step pays).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llorch/backend.h"
#include "llorch/file.h"
#include "llorch/grammar.h"
#include "llorch/model.h"
#include "llorch/sampler.h"
#include "llorch/tokenizer.h"
#include "bench_grammar.h"

static double bg_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int bg_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

typedef struct bg_ctx {
  llorch_backend *be;
  uint32_t n_vocab;
  int32_t *tok, *pos, *seq;
  int8_t *want;
  float *logits;        /* (n_par, n_vocab) */
  uint32_t *mask;       /* (words) */
  double *mask_us;      /* samples of mask time, microseconds */
  size_t n_mask, cap_mask;
  uint64_t n_outputs;   /* completed constrained outputs */
  double mask_s;        /* total seconds spent in masks */
  double grammar_run_s; /* total seconds of the constrained runs */
} bg_ctx;

/* steps decode steps of n_par sequences; g NULL = unconstrained. */
static int bg_decode(bg_ctx *c, llorch_grammar *g, const llorch_grammar_vocab *v, int n_par,
                     int steps, double *tps, llorch_errmsg *em) {
  llorch_sampler *smp[64] = {0};
  llorch_grammar_state *st[64] = {0};
  int32_t next[64];
  int rc = 0;
  llorch_sampler_params sp;
  llorch_sampler_params_default(&sp);
  sp.temperature = 1.0f;
  for (int s = 0; s < n_par; s++) {
    sp.seed = (uint64_t)s + 1;
    if ((rc = llorch_sampler_init(&smp[s], &sp, c->n_vocab, em)) < 0) goto out;
    if (g && (rc = llorch_grammar_state_init(&st[s], g, v, em)) < 0) goto out;
    c->be->ops->seq_reset(c->be->ctx, s);
    next[s] = 0;
  }
  double t0 = bg_now();
  for (int step = 0; step < steps; step++) {
    for (int s = 0; s < n_par; s++) {
      c->tok[s] = next[s];
      c->pos[s] = step;
      c->seq[s] = s;
      c->want[s] = 1;
    }
    llorch_batch b = {.n_tokens = n_par, .token = c->tok, .pos = c->pos, .seq = c->seq,
                      .logits = c->want};
    if ((rc = c->be->ops->forward(c->be->ctx, &b, c->logits, em)) < 0) goto out;
    for (int s = 0; s < n_par; s++) {
      const float *row = c->logits + (size_t)s * c->n_vocab;
      llorch_sample_result res;
      if (g) {
        double m0 = bg_now();
        int n = llorch_grammar_state_mask(st[s], c->mask, em);
        double m1 = bg_now();
        if (n < 0) {
          rc = n;
          goto out;
        }
        if (c->n_mask < c->cap_mask) c->mask_us[c->n_mask++] = (m1 - m0) * 1e6;
        c->mask_s += m1 - m0;
        if ((rc = llorch_sampler_sample_masked(smp[s], row, c->mask, NULL, 0, &res, em)) < 0)
          goto out;
        if ((rc = llorch_grammar_state_accept(st[s], res.token, em)) < 0) goto out;
        if (llorch_grammar_state_finished(st[s])) {
          /* a complete output: start the next one */
          c->n_outputs++;
          llorch_grammar_state_free(st[s]);
          st[s] = NULL;
          if ((rc = llorch_grammar_state_init(&st[s], g, v, em)) < 0) goto out;
        }
      } else if ((rc = llorch_sampler_sample(smp[s], row, NULL, 0, &res, em)) < 0) {
        goto out;
      }
      next[s] = res.token;
    }
  }
  double dt = bg_now() - t0;
  *tps = (double)n_par * steps / dt;
  if (g) c->grammar_run_s += dt;
out:
  for (int s = 0; s < n_par; s++) {
    llorch_sampler_free(smp[s]);
    llorch_grammar_state_free(st[s]);
  }
  return rc;
}

int bench_grammar_run(const bench_grammar_opts *o, llorch_model *m, llorch_errmsg *em) {
  int status = 1, rc;
  llorch_tokenizer *tok = NULL;
  llorch_grammar_vocab *v = NULL;
  llorch_grammar *g = NULL;
  cJSON *schema = NULL;
  char *text = NULL;
  llorch_backend be;
  memset(&be, 0, sizeof be);
  bg_ctx c = {.be = &be, .n_vocab = m->hp.n_vocab};
  const int n_par = o->batch > 1 ? o->batch : 8;
  if (n_par > 64) {
    fprintf(stderr, "llorch bench: --batch %d: at most 64 with --json-schema\n", n_par);
    return 1;
  }

  /* the schema */
  llorch_errmsg rem = {{0}};
  if (llorch_file_read(o->schema_path, "--json-schema", 64u << 20, &text, NULL, &rem) < 0) {
    fprintf(stderr, "llorch bench: %s\n", rem.text);
    goto done;
  }
  schema = cJSON_Parse(text);
  if (!schema) {
    fprintf(stderr, "llorch bench: --json-schema %s: not valid JSON\n", o->schema_path);
    goto done;
  }
  /* compile time: the best of several compiles (each a full compile) */
  double compile_ms = 1e9;
  for (int k = 0; k < 5; k++) {
    double t = bg_now();
    llorch_grammar *tmp = NULL;
    if ((rc = llorch_grammar_from_schema(&tmp, schema, 0, NULL, NULL, 0, em)) < 0) {
      fprintf(stderr, "llorch bench: --json-schema %s: %s\n", o->schema_path, em->text);
      goto done;
    }
    double ms = (bg_now() - t) * 1e3;
    if (ms < compile_ms) compile_ms = ms;
    if (k == 0) g = tmp;
    else llorch_grammar_free(tmp);
  }
  llorch_grammar_stats gs;
  llorch_grammar_stats_get(g, &gs);

  double t = bg_now();
  if ((rc = llorch_tokenizer_load_file(&tok, o->model_path, em)) < 0 ||
      (rc = llorch_grammar_vocab_init(&v, tok, em)) < 0) {
    fprintf(stderr, "llorch bench: vocabulary: %s\n", em->text);
    goto done;
  }
  double vocab_ms = (bg_now() - t) * 1e3;

  uint32_t n_ctx = (uint32_t)o->gen_tokens + 8;
  llorch_backend_params bp = {.n_ctx = n_ctx, .n_seq = (uint32_t)n_par,
                              .n_batch_max = (uint32_t)n_par, .n_threads = o->threads};
  if ((rc = llorch_backend_open(&be, m, o->device, &bp, em)) < 0) {
    fprintf(stderr, "llorch bench: backend %s: %s\n", o->device, em->text);
    goto done;
  }
  c.tok = calloc((size_t)n_par, sizeof *c.tok);
  c.pos = calloc((size_t)n_par, sizeof *c.pos);
  c.seq = calloc((size_t)n_par, sizeof *c.seq);
  c.want = calloc((size_t)n_par, 1);
  c.logits = malloc((size_t)n_par * c.n_vocab * sizeof *c.logits);
  c.mask = malloc(((size_t)c.n_vocab + 31) / 32 * sizeof *c.mask);
  c.cap_mask = (size_t)o->reps * (size_t)o->gen_tokens * (size_t)(n_par + 1) + 16;
  c.mask_us = malloc(c.cap_mask * sizeof *c.mask_us);
  if (!c.tok || !c.pos || !c.seq || !c.want || !c.logits || !c.mask || !c.mask_us) {
    fprintf(stderr, "llorch bench: out of memory\n");
    goto done;
  }
  /* warm-up: weights paged in, the grammar's first states built */
  double warm;
  if ((rc = bg_decode(&c, NULL, v, 1, 2, &warm, em)) < 0) goto fail;
  c.n_mask = 0;

  double u1 = 0, g1 = 0, un = 0, gn = 0;
  for (int rep = 0; rep < o->reps; rep++) {
    double x;
    if ((rc = bg_decode(&c, NULL, v, 1, o->gen_tokens, &x, em)) < 0) goto fail;
    u1 += x / o->reps;
    if ((rc = bg_decode(&c, g, v, 1, o->gen_tokens, &x, em)) < 0) goto fail;
    g1 += x / o->reps;
    if ((rc = bg_decode(&c, NULL, v, n_par, o->gen_tokens, &x, em)) < 0) goto fail;
    un += x / o->reps;
    if ((rc = bg_decode(&c, g, v, n_par, o->gen_tokens, &x, em)) < 0) goto fail;
    gn += x / o->reps;
  }
  qsort(c.mask_us, c.n_mask, sizeof *c.mask_us, bg_cmp_double);
  double p50 = c.n_mask ? c.mask_us[c.n_mask / 2] : 0;
  double p99 = c.n_mask ? c.mask_us[(size_t)((double)(c.n_mask - 1) * 0.99)] : 0;
  double pmax = c.n_mask ? c.mask_us[c.n_mask - 1] : 0;
  llorch_grammar_stats_get(g, &gs);
  if (o->json) {
    printf("{\"schema\":\"%s\",\"n_vocab\":%u,\"compile_ms\":%.3f,\"rules\":%u,\"vocab_ms\":%.1f,"
           "\"threads\":%d,\"gen_tokens\":%d,\"reps\":%d,\"batch\":%d,"
           "\"tg_tok_s\":%.2f,\"tg_schema_tok_s\":%.2f,\"ratio_1\":%.3f,"
           "\"tg_batch_tok_s\":%.2f,\"tg_batch_schema_tok_s\":%.2f,\"ratio_batch\":%.3f,"
           "\"mask_share\":%.4f,\"mask_us_p50\":%.1f,\"mask_us_p99\":%.1f,\"mask_us_max\":%.1f,\"masks\":%zu,"
           "\"mask_walks\":%" PRIu64 ",\"mask_hits\":%" PRIu64 ",\"states\":%u,\"outputs\":%" PRIu64
           "}\n",
           o->schema_path, c.n_vocab, compile_ms, gs.n_rules, vocab_ms, o->threads, o->gen_tokens,
           o->reps, n_par, u1, g1, g1 / u1, un, gn, gn / un, c.mask_s / c.grammar_run_s, p50, p99, pmax, c.n_mask,
           gs.n_mask_walks, gs.n_mask_hits, gs.n_states, c.n_outputs);
  } else {
    printf("schema    %s: compiled in %.2f ms (%u rules)\n", o->schema_path, compile_ms, gs.n_rules);
    printf("vocab     %u tokens, trie built in %.1f ms\n", c.n_vocab, vocab_ms);
    printf("batch 1   %8.2f tok/s unconstrained, %8.2f tok/s with the schema (%.3fx)\n", u1, g1,
           g1 / u1);
    printf("batch %-3d %8.2f tok/s unconstrained, %8.2f tok/s with the schema (%.3fx)\n", n_par,
           un, gn, gn / un);
    printf("mask      %.2f%% of the constrained runs' time\n", 100.0 * c.mask_s / c.grammar_run_s);
    printf("mask      p50 %.1f us, p99 %.1f us, max %.1f us over %zu masks (%" PRIu64
           " trie walks, %" PRIu64 " cache hits, %u DFA states); %" PRIu64 " outputs completed\n",
           p50, p99, pmax, c.n_mask, gs.n_mask_walks, gs.n_mask_hits, gs.n_states, c.n_outputs);
  }
  status = 0;
  goto done;
fail:
  fprintf(stderr, "llorch bench: %s\n", em->text[0] ? em->text : llorch_strerror(rc));
done:
  free(c.tok);
  free(c.pos);
  free(c.seq);
  free(c.want);
  free(c.logits);
  free(c.mask);
  free(c.mask_us);
  llorch_backend_close(&be);
  llorch_grammar_free(g);
  llorch_grammar_vocab_free(v);
  llorch_tokenizer_free(tok);
  cJSON_Delete(schema);
  free(text);
  return status;
}
