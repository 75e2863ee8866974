/*
 * `llorch bench`: load time, prompt-processing and generation speed, and
 * memory of one model on one backend.
 *
 *   llorch bench --model FILE [--threads N] [--prompt-tokens N] [--gen-tokens N]
 *                [--batch N] [--ubatch N] [--reps N] [--device D] [--json]
 *
 * As llama-bench measures: pp is one prompt of N tokens (ids drawn at
 * random, fixed seed) processed in forward calls of --ubatch entries (512)
 * with logits for the last position only; tg is N single-token decode steps
 * from an empty context, logits every step (sampling is not timed: the
 * engine alone is measured). --batch N adds a run where N sequences decode
 * together, one entry each per forward call, reported as aggregate tok/s.
 * A warm-up forward precedes the timed runs. Figures are the mean over
 * --reps repetitions.
 *
 * --json-schema FILE runs bench_grammar.c instead: decoding under the schema
 * against the same decoding without it (tok/s at batch 1 and --batch N,
 * compile time, per-token mask time p50/p99).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llorch/backend.h"
#include "llorch/commands.h"
#include "llorch/error.h"
#include "llorch/model.h"
#include "bench_grammar.h"

typedef struct bench_opts {
  const char *model;   /* GGUF path */
  const char *device;  /* "cpu", "cuda:N" */
  int threads;         /* CPU threads */
  int prompt_tokens;   /* pp length; 0 skips pp */
  int gen_tokens;      /* tg steps; 0 skips tg */
  int batch;           /* sequences decoding together in the batched run; <= 1 skips it */
  int ubatch;          /* entries per forward call during pp */
  int reps;            /* repetitions averaged */
  bool json;
  const char *json_schema; /* --json-schema FILE: the structured-output comparison */
} bench_opts;

typedef struct bench_result {
  double load_s;       /* model open + validation + backend init, seconds */
  double pp_tps;       /* prompt tokens per second (mean) */
  double pp_s;         /* seconds per prompt (mean) */
  double tg_tps;       /* batch-1 generated tokens per second (mean) */
  double tgb_tps;      /* aggregate tokens per second with --batch sequences */
  long rss_kib;        /* VmRSS at the end */
  long hwm_kib;        /* VmHWM (peak RSS) */
} bench_result;

static double bench_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void bench_usage(FILE *f) {
  fprintf(f,
          "usage: llorch bench --model FILE [--threads N] [--prompt-tokens N] [--gen-tokens N]\n"
          "                    [--batch N] [--ubatch N] [--reps N] [--device D] [--json]\n"
          "  --threads N        CPU threads (default 2)\n"
          "  --prompt-tokens N  prompt-processing test length (default 512; 0 skips)\n"
          "  --gen-tokens N     generation test length (default 128; 0 skips)\n"
          "  --batch N          also decode N sequences together (aggregate tok/s)\n"
          "  --ubatch N         entries per forward call during the prompt (default 512)\n"
          "  --reps N           repetitions to average (default 1)\n"
          "  --device D         cpu (default) or cuda:N\n"
          "  --json             one JSON object instead of a table\n"
          "  --json-schema FILE decode under this JSON Schema vs without it (batch 1 and\n"
          "                     --batch N, default 8): tok/s, compile time, mask p50/p99\n");
}

/* Parses a positive-or-zero int flag value; prints the error itself. */
static int bench_int(const char *flag, const char *v, int lo, int hi, int *out) {
  char *end;
  errno = 0;
  long x = v ? strtol(v, &end, 10) : 0;
  if (!v || errno || *end != '\0' || x < lo || x > hi) {
    fprintf(stderr, "llorch bench: %s '%s': expected an integer in %d..%d\n", flag, v ? v : "",
            lo, hi);
    return -1;
  }
  *out = (int)x;
  return 0;
}

static int bench_parse(int argc, char **argv, bench_opts *o) {
  *o = (bench_opts){.device = "cpu", .threads = 2, .prompt_tokens = 512, .gen_tokens = 128,
                    .batch = 0, .ubatch = 512, .reps = 1};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    int rc = 0;
    if (strcmp(a, "--model") == 0 && v) o->model = argv[++i];
    else if (strcmp(a, "--device") == 0 && v) o->device = argv[++i];
    else if (strcmp(a, "--json") == 0) o->json = true;
    else if (strcmp(a, "--json-schema") == 0 && v) o->json_schema = argv[++i];
    else if (strcmp(a, "--threads") == 0) rc = bench_int(a, v, 1, 1024, &o->threads), i++;
    else if (strcmp(a, "--prompt-tokens") == 0) rc = bench_int(a, v, 0, 1 << 20, &o->prompt_tokens), i++;
    else if (strcmp(a, "--gen-tokens") == 0) rc = bench_int(a, v, 0, 1 << 20, &o->gen_tokens), i++;
    else if (strcmp(a, "--batch") == 0) rc = bench_int(a, v, 0, 4096, &o->batch), i++;
    else if (strcmp(a, "--ubatch") == 0) rc = bench_int(a, v, 1, 65536, &o->ubatch), i++;
    else if (strcmp(a, "--reps") == 0) rc = bench_int(a, v, 1, 1000, &o->reps), i++;
    else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      bench_usage(stdout);
      exit(0);
    } else {
      fprintf(stderr, "llorch bench: unknown or incomplete option '%s'\n", a);
      bench_usage(stderr);
      return -1;
    }
    if (rc) return -1;
  }
  if (!o->model) {
    fprintf(stderr, "llorch bench: --model FILE is required\n");
    bench_usage(stderr);
    return -1;
  }
  return 0;
}

/* VmRSS / VmHWM from /proc/self/status, KiB; -1 when unavailable. */
static void bench_rss(long *rss, long *hwm) {
  *rss = *hwm = -1;
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return;
  char line[256];
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "VmRSS:", 6) == 0) *rss = strtol(line + 6, NULL, 10);
    if (strncmp(line, "VmHWM:", 6) == 0) *hwm = strtol(line + 6, NULL, 10);
  }
  fclose(f);
}

typedef struct bench_run {
  llorch_backend *be;
  int32_t *tok, *pos, *seq;
  int8_t *want;
  float *logits;
  uint32_t n_vocab;
  llorch_errmsg *em;
} bench_run;

static uint64_t bench_rng = 0x2545F4914F6CDD1Dull;

static int32_t bench_token(uint32_t n_vocab) {
  bench_rng ^= bench_rng << 13;
  bench_rng ^= bench_rng >> 7;
  bench_rng ^= bench_rng << 17;
  return (int32_t)(bench_rng % n_vocab);
}

static int bench_forward(bench_run *r, int n) {
  llorch_batch b = {.n_tokens = n, .token = r->tok, .pos = r->pos, .seq = r->seq, .logits = r->want};
  return r->be->ops->forward(r->be->ctx, &b, r->logits, r->em);
}

/* One prompt of n tokens in sequence slot s, in chunks of ubatch. */
static int bench_prompt(bench_run *r, int32_t s, int n, int ubatch) {
  r->be->ops->seq_reset(r->be->ctx, s);
  for (int p0 = 0; p0 < n; p0 += ubatch) {
    int m = n - p0 < ubatch ? n - p0 : ubatch;
    for (int i = 0; i < m; i++) {
      r->tok[i] = bench_token(r->n_vocab);
      r->pos[i] = p0 + i;
      r->seq[i] = s;
      r->want[i] = p0 + i == n - 1;
    }
    int rc = bench_forward(r, m);
    if (rc) return rc;
  }
  return 0;
}

/* g steps of n_par sequences (slots 0..n_par-1) decoding from empty. */
static int bench_decode(bench_run *r, int n_par, int g) {
  for (int s = 0; s < n_par; s++) r->be->ops->seq_reset(r->be->ctx, s);
  for (int step = 0; step < g; step++) {
    for (int s = 0; s < n_par; s++) {
      r->tok[s] = bench_token(r->n_vocab);
      r->pos[s] = step;
      r->seq[s] = s;
      r->want[s] = 1;
    }
    int rc = bench_forward(r, n_par);
    if (rc) return rc;
  }
  return 0;
}

static void bench_print(const bench_opts *o, const llorch_model *m, const bench_result *res) {
  const double gib = 1024.0 * 1024.0 * 1024.0;
  if (o->json) {
    printf("{\"model\":\"%s\",\"arch\":\"%s\",\"type\":\"%s\",\"n_params\":%" PRIu64
           ",\"weight_bytes\":%" PRIu64 ",\"device\":\"%s\",\"threads\":%d,\"load_s\":%.3f",
           m->name, m->arch_name, llorch_type_name(m->main_type), m->n_params, m->weight_bytes,
           o->device, o->threads, res->load_s);
    if (o->prompt_tokens) printf(",\"pp_tokens\":%d,\"pp_tok_s\":%.2f,\"pp_s\":%.3f", o->prompt_tokens, res->pp_tps, res->pp_s);
    if (o->gen_tokens) printf(",\"tg_tokens\":%d,\"tg_tok_s\":%.2f", o->gen_tokens, res->tg_tps);
    if (o->gen_tokens && o->batch > 1) printf(",\"batch\":%d,\"tg_batch_tok_s\":%.2f", o->batch, res->tgb_tps);
    printf(",\"reps\":%d,\"rss_bytes\":%ld,\"peak_rss_bytes\":%ld}\n", o->reps, res->rss_kib * 1024,
           res->hwm_kib * 1024);
    return;
  }
  printf("model     %s (%s, %s, %.1fM params, %.2f GiB)\n", m->name, m->arch_name,
         llorch_type_name(m->main_type), (double)m->n_params / 1e6, (double)m->weight_bytes / gib);
  printf("device    %s, %d threads\n", o->device, o->threads);
  printf("load      %.3f s\n", res->load_s);
  if (o->prompt_tokens)
    printf("pp%-6d  %8.2f tok/s  (%.3f s per prompt, ubatch %d)\n", o->prompt_tokens, res->pp_tps,
           res->pp_s, o->ubatch);
  if (o->gen_tokens) printf("tg%-6d  %8.2f tok/s\n", o->gen_tokens, res->tg_tps);
  if (o->gen_tokens && o->batch > 1)
    printf("tg%-4dx%-2d %8.2f tok/s aggregate (%d sequences)\n", o->gen_tokens, o->batch,
           res->tgb_tps, o->batch);
  printf("rss       %.3f GiB (peak %.3f GiB)\n", (double)res->rss_kib / (1024.0 * 1024.0),
         (double)res->hwm_kib / (1024.0 * 1024.0));
}

int llorch_cmd_bench(int argc, char **argv) {
  bench_opts o;
  if (bench_parse(argc, argv, &o)) return 2;
  llorch_errmsg em = {{0}};
  bench_result res;
  memset(&res, 0, sizeof res);
  int status = 1;
  llorch_model *m = NULL;
  llorch_backend be;
  memset(&be, 0, sizeof be);
  bench_run r = {.be = &be, .em = &em};

  double t0 = bench_now();
  int rc = llorch_model_load(&m, o.model, &em);
  if (rc) {
    fprintf(stderr, "llorch bench: %s: %s\n", o.model, em.text[0] ? em.text : llorch_strerror(rc));
    return 1;
  }
  if (o.json_schema) {
    bench_grammar_opts go = {.schema_path = o.json_schema, .model_path = o.model,
                             .device = o.device, .threads = o.threads, .gen_tokens = o.gen_tokens,
                             .batch = o.batch, .reps = o.reps, .json = o.json};
    status = bench_grammar_run(&go, m, &em);
    llorch_model_free(m);
    return status;
  }
  const int n_par = o.batch > 1 ? o.batch : 1;
  const int ub = o.prompt_tokens && o.ubatch > o.prompt_tokens ? o.prompt_tokens : o.ubatch;
  const int n_batch_max = ub > n_par ? ub : n_par;
  uint32_t n_ctx = (uint32_t)(o.prompt_tokens > o.gen_tokens ? o.prompt_tokens : o.gen_tokens) + 8;
  if (n_ctx > m->hp.n_ctx_train) {
    fprintf(stderr, "llorch bench: %u positions needed, the model's context is %u\n", n_ctx,
            m->hp.n_ctx_train);
    goto done;
  }
  llorch_backend_params bp = {.n_ctx = n_ctx, .n_seq = (uint32_t)n_par, .n_batch_max = (uint32_t)n_batch_max,
                              .n_threads = o.threads};
  rc = llorch_backend_open(&be, m, o.device, &bp, &em);
  if (rc) {
    fprintf(stderr, "llorch bench: backend %s: %s\n", o.device, em.text[0] ? em.text : llorch_strerror(rc));
    goto done;
  }
  res.load_s = bench_now() - t0;
  r.n_vocab = m->hp.n_vocab;
  r.tok = calloc((size_t)n_batch_max, sizeof(int32_t));
  r.pos = calloc((size_t)n_batch_max, sizeof(int32_t));
  r.seq = calloc((size_t)n_batch_max, sizeof(int32_t));
  r.want = calloc((size_t)n_batch_max, 1);
  r.logits = malloc((size_t)n_par * m->hp.n_vocab * sizeof(float));
  if (!r.tok || !r.pos || !r.seq || !r.want || !r.logits) {
    fprintf(stderr, "llorch bench: out of memory\n");
    goto done;
  }
  /* warm-up: pages of the weights in, threads spinning */
  if ((rc = bench_decode(&r, 1, 2))) goto fail_fwd;
  for (int rep = 0; rep < o.reps; rep++) {
    if (o.prompt_tokens) {
      double t = bench_now();
      if ((rc = bench_prompt(&r, 0, o.prompt_tokens, ub))) goto fail_fwd;
      double dt = bench_now() - t;
      res.pp_s += dt / o.reps;
      res.pp_tps += (o.prompt_tokens / dt) / o.reps;
    }
    if (o.gen_tokens) {
      double t = bench_now();
      if ((rc = bench_decode(&r, 1, o.gen_tokens))) goto fail_fwd;
      res.tg_tps += (o.gen_tokens / (bench_now() - t)) / o.reps;
      if (o.batch > 1) {
        t = bench_now();
        if ((rc = bench_decode(&r, n_par, o.gen_tokens))) goto fail_fwd;
        res.tgb_tps += ((double)n_par * o.gen_tokens / (bench_now() - t)) / o.reps;
      }
    }
  }
  bench_rss(&res.rss_kib, &res.hwm_kib);
  bench_print(&o, m, &res);
  status = 0;
  goto done;
fail_fwd:
  fprintf(stderr, "llorch bench: forward failed: %s\n", em.text[0] ? em.text : llorch_strerror(rc));
done:
  free(r.tok);
  free(r.pos);
  free(r.seq);
  free(r.want);
  free(r.logits);
  llorch_backend_close(&be);
  llorch_model_free(m);
  return status;
}
