/*
 * `llorch run`: one prompt through one model on this machine, the
 * continuation streamed to stdout as it is generated.
 *
 *   llorch run --model FILE (--prompt T | --prompt-ids "ID ...")
 *              [--chat [--chat-template chatml|FILE] [--system TEXT]]
 *              [--max-tokens N] [--temp X] [--top-k N] [--top-p X] [--min-p X]
 *              [--repeat-penalty X] [--repeat-last-n N] [--frequency-penalty X]
 *              [--presence-penalty X] [--seed N] [--threads N] [--ctx N]
 *              [--batch N] [--device D] [--stop S]... [--ignore-eos]
 *              [--logprobs N] [--json]
 *
 * Text mode writes only the generated text to stdout (complete UTF-8 only,
 * held back across tokens while it might still become a stop string) and a
 * one-line summary with timings to stderr. --json writes one JSON object per
 * line instead: first {"prompt":[ids]}, then per generated token
 * {"id":N,"text":"...","logprob":X[,"top_logprobs":[...]]}, where text is what
 * that token released to the stream (it may be "" while UTF-8 or a possible
 * stop string is held back; what is still held at the end comes in a line
 * with id -1), and last {"done":true,"reason":...} with counts and timings. --prompt-ids skips the tokenizer (the llama.cpp reference
 * harness feeds both engines the same ids).
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "llorch/backend.h"
#include "llorch/chat.h"
#include "llorch/commands.h"
#include "llorch/error.h"
#include "llorch/model.h"
#include "llorch/sampler.h"
#include "llorch/textstream.h"
#include "llorch/tokenizer.h"

#define RUN_MAX_STOP 16

typedef struct run_opts {
  const char *model;        /* path of the GGUF file */
  const char *prompt;       /* prompt text, or NULL */
  const char *prompt_ids;   /* "ID ID ..." instead of text, or NULL */
  const char *device;       /* "cpu", "cuda:N" */
  const char *chat_template; /* --chat-template chatml|FILE, or NULL: the model's */
  const char *system;       /* --system TEXT for --chat, or NULL */
  bool chat;                /* render the prompt as a user message */
  bool json;                /* one JSON object per token */
  bool ignore_eos;          /* keep going past EOS/EOT (benchmarks, comparisons) */
  int32_t max_tokens;       /* tokens to generate at most */
  int32_t threads;          /* CPU threads */
  uint32_t n_ctx;           /* context positions; 0 = min(train context, 4096) */
  uint32_t n_batch;         /* prompt tokens per forward call */
  const char *stop[RUN_MAX_STOP]; /* stop strings (not owned: argv) */
  int n_stop;
  llorch_sampler_params sp;
} run_opts;

/* ---- usage and option parsing ---- */

static void run_usage(FILE *f) {
  fprintf(f,
          "usage: llorch run --model FILE (--prompt TEXT | --prompt-ids \"ID ...\") [options]\n"
          "  --chat                 render the prompt as a user message with the model's chat template\n"
          "  --chat-template T      chatml or a .jinja file (default: the model's tokenizer.chat_template)\n"
          "  --system TEXT          a system message first (with --chat)\n"
          "  --max-tokens N         tokens to generate at most (default 128)\n"
          "  --temp X               temperature, 0 = greedy (default 0.8)\n"
          "  --top-k N              keep the N most likely tokens, 0 = off (default 40)\n"
          "  --top-p X              nucleus mass in (0, 1], 1 = off (default 0.95)\n"
          "  --min-p X              drop tokens below X * max probability (default 0.05)\n"
          "  --repeat-penalty X     repetition penalty, 1 = off (default 1)\n"
          "  --repeat-last-n N      history window of the penalties, -1 = all (default 64)\n"
          "  --frequency-penalty X  in [-2, 2] (default 0)\n"
          "  --presence-penalty X   in [-2, 2] (default 0)\n"
          "  --seed N               sampling seed (default 42: same seed, same text)\n"
          "  --threads N            CPU threads (default: online CPUs)\n"
          "  --ctx N                context length (default min(model's, 4096))\n"
          "  --batch N              prompt tokens per forward call (default 512)\n"
          "  --device D             cpu or cuda:N (default cpu)\n"
          "  --stop S               stop string, may be repeated (up to %d)\n"
          "  --ignore-eos           do not stop at EOS/EOT\n"
          "  --logprobs N           report the N most likely alternatives per token (0..20, --json)\n"
          "  --json                 one JSON object per line per token: {id, text, logprob}\n",
          RUN_MAX_STOP);
}

static int run_parse_i64(const char *flag, const char *s, int64_t min, int64_t max, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end || v < min || v > max) {
    fprintf(stderr, "llorch run: %s '%s': expected an integer in [%" PRId64 ", %" PRId64 "]\n",
            flag, s, min, max);
    return -1;
  }
  *out = v;
  return 0;
}

static int run_parse_float(const char *flag, const char *s, float *out) {
  char *end;
  errno = 0;
  float v = strtof(s, &end);
  if (errno || end == s || *end || !isfinite(v)) {
    fprintf(stderr, "llorch run: %s '%s': expected a number\n", flag, s);
    return -1;
  }
  *out = v;
  return 0;
}

/* Returns 0, or 2 (usage error) after saying what was wrong. */
static int run_parse_args(int argc, char **argv, run_opts *o) {
  memset(o, 0, sizeof *o);
  llorch_sampler_params_default(&o->sp);
  /* llama.cpp's defaults for an interactive sampler */
  o->sp.temperature = 0.8f;
  o->sp.top_k = 40;
  o->sp.top_p = 0.95f;
  o->sp.min_p = 0.05f;
  o->sp.seed = 42;
  o->max_tokens = 128;
  o->device = "cpu";
  o->n_batch = 512;
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  o->threads = ncpu > 0 ? (int32_t)ncpu : 1;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      run_usage(stdout);
      return 1; /* caller exits 0 */
    }
    if (!strcmp(a, "--chat")) { o->chat = true; continue; }
    if (!strcmp(a, "--json")) { o->json = true; continue; }
    if (!strcmp(a, "--ignore-eos")) { o->ignore_eos = true; continue; }
    if (i + 1 >= argc) {
      fprintf(stderr, "llorch run: unknown option or missing value: '%s'\n", a);
      return 2;
    }
    const char *v = argv[++i];
    int64_t n;
    float f;
    if (!strcmp(a, "--model")) o->model = v;
    else if (!strcmp(a, "--prompt")) o->prompt = v;
    else if (!strcmp(a, "--prompt-ids")) o->prompt_ids = v;
    else if (!strcmp(a, "--device")) o->device = v;
    else if (!strcmp(a, "--chat-template")) o->chat_template = v;
    else if (!strcmp(a, "--system")) o->system = v;
    else if (!strcmp(a, "--stop")) {
      if (o->n_stop == RUN_MAX_STOP) {
        fprintf(stderr, "llorch run: --stop: at most %d stop strings\n", RUN_MAX_STOP);
        return 2;
      }
      if (!*v) {
        fprintf(stderr, "llorch run: --stop: expected a non-empty string\n");
        return 2;
      }
      o->stop[o->n_stop++] = v;
    } else if (!strcmp(a, "--max-tokens")) {
      if (run_parse_i64(a, v, 0, INT32_MAX, &n)) return 2;
      o->max_tokens = (int32_t)n;
    } else if (!strcmp(a, "--threads")) {
      if (run_parse_i64(a, v, 1, 1024, &n)) return 2;
      o->threads = (int32_t)n;
    } else if (!strcmp(a, "--ctx")) {
      if (run_parse_i64(a, v, 1, 1 << 24, &n)) return 2;
      o->n_ctx = (uint32_t)n;
    } else if (!strcmp(a, "--batch")) {
      if (run_parse_i64(a, v, 1, 1 << 16, &n)) return 2;
      o->n_batch = (uint32_t)n;
    } else if (!strcmp(a, "--top-k")) {
      if (run_parse_i64(a, v, 0, INT32_MAX, &n)) return 2;
      o->sp.top_k = (int32_t)n;
    } else if (!strcmp(a, "--repeat-last-n")) {
      if (run_parse_i64(a, v, -1, INT32_MAX, &n)) return 2;
      o->sp.penalty_last_n = (int32_t)n;
    } else if (!strcmp(a, "--seed")) {
      char *end;
      errno = 0;
      unsigned long long s = strtoull(v, &end, 10);
      if (errno || end == v || *end || *v == '-') {
        fprintf(stderr, "llorch run: --seed '%s': expected an unsigned integer\n", v);
        return 2;
      }
      o->sp.seed = s;
    } else if (!strcmp(a, "--logprobs")) {
      if (run_parse_i64(a, v, 0, LLORCH_SAMPLER_MAX_LOGPROBS, &n)) return 2;
      o->sp.n_logprobs = (int32_t)n;
    } else if (!strcmp(a, "--temp")) {
      if (run_parse_float(a, v, &f)) return 2;
      o->sp.temperature = f;
    } else if (!strcmp(a, "--top-p")) {
      if (run_parse_float(a, v, &f)) return 2;
      o->sp.top_p = f;
    } else if (!strcmp(a, "--min-p")) {
      if (run_parse_float(a, v, &f)) return 2;
      o->sp.min_p = f;
    } else if (!strcmp(a, "--repeat-penalty")) {
      if (run_parse_float(a, v, &f)) return 2;
      o->sp.repetition_penalty = f;
    } else if (!strcmp(a, "--frequency-penalty")) {
      if (run_parse_float(a, v, &f)) return 2;
      o->sp.frequency_penalty = f;
    } else if (!strcmp(a, "--presence-penalty")) {
      if (run_parse_float(a, v, &f)) return 2;
      o->sp.presence_penalty = f;
    } else {
      fprintf(stderr, "llorch run: unknown option '%s' (see llorch run --help)\n", a);
      return 2;
    }
  }
  if (!o->model) {
    fprintf(stderr, "llorch run: --model FILE is required\n");
    return 2;
  }
  if (!o->prompt == !o->prompt_ids) {
    fprintf(stderr, "llorch run: give exactly one of --prompt TEXT and --prompt-ids \"ID ...\"\n");
    return 2;
  }
  if (o->chat && o->prompt_ids) {
    fprintf(stderr, "llorch run: --chat needs --prompt TEXT, not --prompt-ids\n");
    return 2;
  }
  if ((o->chat_template || o->system) && !o->chat) {
    fprintf(stderr, "llorch run: --chat-template and --system need --chat\n");
    return 2;
  }
  llorch_errmsg em = {{0}};
  if (llorch_sampler_params_validate(&o->sp, &em) < 0) {
    fprintf(stderr, "llorch run: %s\n", em.text);
    return 2;
  }
  return 0;
}

/* ---- JSON output ---- */

/* Length of the valid UTF-8 sequence at s[0..n) (1..4), or 0 if invalid. */
static size_t run_utf8_seq_len(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  size_t len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
               : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
  if (len == 0 || len > n) return 0;
  for (size_t i = 1; i < len; i++)
    if ((s[i] & 0xC0) != 0x80) return 0;
  /* overlongs, surrogates and code points past U+10FFFF */
  if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] > 0x9F) || (c == 0xF0 && s[1] < 0x90) ||
      (c == 0xF4 && s[1] > 0x8F))
    return 0;
  return len;
}

/* A JSON string. A token's piece can be part of a character (byte tokens):
 * bytes that are not valid UTF-8 are written as U+FFFD, so every line parses. */
static void run_json_string(FILE *f, const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  fputc('"', f);
  for (size_t i = 0; i < n;) {
    unsigned char c = u[i];
    size_t len = run_utf8_seq_len(u + i, n - i);
    if (len == 0) {
      fputs("\\ufffd", f);
      i++;
      continue;
    }
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c == '\n') fputs("\\n", f);
    else if (c == '\r') fputs("\\r", f);
    else if (c == '\t') fputs("\\t", f);
    else if (c < 0x20 || c == 0x7f) fprintf(f, "\\u%04x", c);
    else fwrite(u + i, 1, len, f);
    i += len;
  }
  fputc('"', f);
}

/* JSON has no -inf: a masked token's logprob is written as -9999, as OpenAI does. */
static double run_json_logprob(float lp) { return isfinite(lp) ? (double)lp : -9999.0; }

static void run_json_token(FILE *f, const llorch_tokenizer *tok, const llorch_sample_result *r,
                           const char *text, size_t text_len) {
  fprintf(f, "{\"id\":%d,\"text\":", (int)r->token);
  run_json_string(f, text, text_len);
  fprintf(f, ",\"logprob\":%.6g", run_json_logprob(r->logprob));
  if (r->n_top > 0) {
    fputs(",\"top_logprobs\":[", f);
    for (int32_t i = 0; i < r->n_top; i++) {
      char piece[256];
      int pl = llorch_token_piece(tok, r->top[i].id, LLORCH_DETOK_RENDER_SPECIAL, piece, sizeof piece);
      if (pl < 0) pl = 0;
      if ((size_t)pl > sizeof piece) pl = (int)sizeof piece;
      fprintf(f, "%s{\"id\":%d,\"token\":", i ? "," : "", (int)r->top[i].id);
      run_json_string(f, piece, (size_t)pl);
      fprintf(f, ",\"logprob\":%.6g}", run_json_logprob(r->top[i].logprob));
    }
    fputc(']', f);
  }
  fputs("}\n", f);
  fflush(f);
}

/* ---- prompt ---- */

static int run_parse_prompt_ids(const char *s, uint32_t n_vocab, llorch_tokens *out,
                                llorch_errmsg *em) {
  const char *p = s;
  while (*p) {
    while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n') p++;
    if (!*p) break;
    char *end;
    errno = 0;
    long v = strtol(p, &end, 10);
    if (end == p || errno || v < 0 || (unsigned long)v >= n_vocab)
      return llorch_errmsg_set(em, LLORCH_EINVAL,
                               "--prompt-ids: '%.20s': expected token ids in [0, %u)", p, n_vocab);
    if (llorch_tokens_push(out, (int32_t)v) < 0) return LLORCH_ENOMEM;
    p = end;
  }
  if (out->n == 0)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "--prompt-ids: no token ids in '%s'", s);
  return 0;
}

static int run_make_prompt(const run_opts *o, const llorch_model *m, const llorch_tokenizer *tok,
                           llorch_tokens *out, llorch_errmsg *em) {
  if (o->prompt_ids) return run_parse_prompt_ids(o->prompt_ids, m->hp.n_vocab, out, em);
  if (!o->chat)
    return llorch_tokenize(tok, o->prompt, strlen(o->prompt), LLORCH_TOKENIZE_ADD_SPECIAL, out, em);

  /* The model's own template; the prompt is request text, so special-token
   * text in it stays text (chat.h). */
  llorch_chat *chat = NULL;
  llorch_jinja_output r = {0};
  int rc = llorch_chat_init_model(&chat, m->gguf, tok, o->chat_template, em);
  if (rc < 0) return rc;
  cJSON *ctx = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(ctx, "messages");
  if (!ctx || !msgs || !cJSON_AddTrueToObject(ctx, "add_generation_prompt")) {
    rc = llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");
    goto done;
  }
  for (int i = 0; i < 2; i++) {
    const char *text = i == 0 ? o->system : o->prompt;
    if (!text) continue;
    cJSON *msg = cJSON_CreateObject();
    if (!msg || !cJSON_AddItemToArray(msgs, msg) || !cJSON_AddStringToObject(msg, "role", i == 0 ? "system" : "user") ||
        !cJSON_AddStringToObject(msg, "content", text)) {
      rc = llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");
      goto done;
    }
  }
  if ((rc = llorch_chat_render(chat, ctx, 0, &r, em)) == 0) rc = llorch_chat_tokenize(tok, &r, out, em);
done:
  llorch_jinja_output_free(&r);
  cJSON_Delete(ctx);
  llorch_chat_free(chat);
  return rc;
}

/* ---- generation ---- */

static double run_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct run_stats {
  uint32_t n_prompt, n_gen;
  double prefill_s, gen_s;
  const char *reason; /* "eos", "stop", "length", "context" */
} run_stats;

/*
 * Prefill in chunks of n_batch, then decode one token at a time. history
 * holds the prompt and then every generated token (the penalties' window).
 */
static int run_generate(const run_opts *o, llorch_backend *be, const llorch_tokenizer *tok,
                        llorch_sampler *smp, llorch_tokens *history, run_stats *st,
                        llorch_errmsg *em) {
  const uint32_t nv = be->model->hp.n_vocab;
  const uint32_t n_batch = be->params.n_batch_max;
  int rc = 0;
  int32_t *pos = malloc(n_batch * sizeof *pos);
  int32_t *seq = calloc(n_batch, sizeof *seq);
  int8_t *want = calloc(n_batch, sizeof *want);
  float *logits = malloc((size_t)nv * sizeof *logits);
  llorch_textstream *ts = NULL;
  llorch_textstream_out txt;
  if (!pos || !seq || !want || !logits) {
    rc = llorch_errmsg_set(em, LLORCH_ENOMEM, "generation buffers: out of memory");
    goto done;
  }
  rc = llorch_textstream_init(&ts, tok, LLORCH_DETOK_DEFAULT, o->stop, (size_t)o->n_stop, em);
  if (rc < 0) goto done;

  double t0 = run_now_s();
  st->n_prompt = (uint32_t)history->n;
  for (uint32_t done_n = 0; done_n < st->n_prompt;) {
    uint32_t n = st->n_prompt - done_n < n_batch ? st->n_prompt - done_n : n_batch;
    for (uint32_t i = 0; i < n; i++) {
      pos[i] = (int32_t)(done_n + i);
      want[i] = done_n + i == st->n_prompt - 1;
    }
    llorch_batch b = {(int32_t)n, history->ids + done_n, pos, seq, want, NULL};
    rc = be->ops->forward(be->ctx, &b, logits, em);
    if (rc < 0) goto done;
    done_n += n;
  }
  double t1 = run_now_s();
  st->prefill_s = t1 - t0;

  st->reason = "length";
  want[0] = 1;
  for (;;) {
    if (st->n_gen >= (uint32_t)o->max_tokens) break;
    if (history->n >= be->params.n_ctx) {
      st->reason = "context";
      break;
    }
    llorch_sample_result r;
    rc = llorch_sampler_sample(smp, logits, history->ids, history->n, &r, em);
    if (rc < 0) goto done;
    if (!o->ignore_eos && llorch_tokenizer_is_eog(tok, r.token)) {
      st->reason = "eos";
      break;
    }
    st->n_gen++;
    rc = llorch_tokens_push(history, r.token);
    if (rc < 0) {
      llorch_errmsg_set(em, rc, "token history: out of memory");
      goto done;
    }

    rc = llorch_textstream_feed(ts, r.token, &txt);
    if (rc < 0) {
      llorch_errmsg_set(em, rc, "token %d: cannot turn it into text", (int)r.token);
      goto done;
    }
    if (o->json) run_json_token(stdout, tok, &r, txt.text, txt.len);
    else if (txt.len) {
      fwrite(txt.text, 1, txt.len, stdout);
      fflush(stdout);
    }
    if (txt.stop >= 0) {
      st->reason = "stop";
      break;
    }
    if (st->n_gen >= (uint32_t)o->max_tokens) break;

    int32_t p = (int32_t)history->n - 1;
    llorch_batch b = {1, &r.token, &p, seq, want, NULL};
    rc = be->ops->forward(be->ctx, &b, logits, em);
    if (rc < 0) goto done;
  }
  st->gen_s = run_now_s() - t1;

  /* What is still held back (an incomplete UTF-8 tail, the start of a stop
   * string that never completed) belongs to the output now. In JSON it goes
   * out as a line of its own, with no token (id -1). */
  if (!llorch_textstream_stopped(ts)) {
    rc = llorch_textstream_flush(ts, &txt);
    if (rc < 0) {
      llorch_errmsg_set(em, rc, "text stream: out of memory");
      goto done;
    }
    if (txt.len && o->json) {
      fputs("{\"id\":-1,\"text\":", stdout);
      run_json_string(stdout, txt.text, txt.len);
      fputs(",\"logprob\":0}\n", stdout);
    } else if (txt.len) {
      fwrite(txt.text, 1, txt.len, stdout);
    }
  }

done:
  llorch_textstream_free(ts);
  free(logits);
  free(want);
  free(seq);
  free(pos);
  return rc;
}

/* ---- the command ---- */

int llorch_cmd_run(int argc, char **argv) {
  run_opts o;
  int prc = run_parse_args(argc, argv, &o);
  if (prc == 1) return 0; /* --help */
  if (prc) return prc;

  llorch_errmsg em = {{0}};
  llorch_model *m = NULL;
  llorch_tokenizer *tok = NULL;
  llorch_sampler *smp = NULL;
  llorch_backend be = {0};
  llorch_tokens history = {0};
  run_stats st = {0};
  int rc;
  const char *what;

  what = o.model;
  rc = llorch_model_load(&m, o.model, &em);
  if (rc < 0) goto fail;
  what = "tokenizer";
  rc = llorch_tokenizer_load(&tok, m->gguf, &em);
  if (rc < 0) goto fail;
  if ((uint32_t)llorch_tokenizer_n_vocab(tok) > m->hp.n_vocab) {
    rc = llorch_errmsg_set(&em, LLORCH_EFORMAT,
                           "the vocabulary has %d tokens but the output layer only %u rows",
                           (int)llorch_tokenizer_n_vocab(tok), m->hp.n_vocab);
    goto fail;
  }
  what = "prompt";
  rc = run_make_prompt(&o, m, tok, &history, &em);
  if (rc < 0) goto fail;

  uint32_t n_ctx = o.n_ctx;
  if (!n_ctx) n_ctx = m->hp.n_ctx_train && m->hp.n_ctx_train < 4096 ? m->hp.n_ctx_train : 4096;
  if (history.n >= n_ctx) {
    rc = llorch_errmsg_set(&em, LLORCH_ELIMIT,
                           "the prompt has %zu tokens; the context holds %u (--ctx)", history.n,
                           n_ctx);
    goto fail;
  }
  what = "backend";
  llorch_backend_params bp = {
      .n_ctx = n_ctx, .n_seq = 1, .n_batch_max = o.n_batch, .n_threads = o.threads};
  rc = llorch_backend_open(&be, m, o.device, &bp, &em);
  if (rc < 0) goto fail;
  what = "sampler";
  rc = llorch_sampler_init(&smp, &o.sp, m->hp.n_vocab, &em);
  if (rc < 0) goto fail_backend;

  if (o.json) {
    fputs("{\"prompt\":[", stdout);
    for (size_t i = 0; i < history.n; i++) printf("%s%d", i ? "," : "", (int)history.ids[i]);
    fputs("]}\n", stdout);
    fflush(stdout);
  }
  what = "generation";
  rc = run_generate(&o, &be, tok, smp, &history, &st, &em);
  if (rc < 0) goto fail_sampler;

  double pp_tps = st.prefill_s > 0 ? st.n_prompt / st.prefill_s : 0;
  double tg_tps = st.gen_s > 0 && st.n_gen > 1 ? (st.n_gen - 1) / st.gen_s : 0;
  if (o.json)
    printf("{\"done\":true,\"reason\":\"%s\",\"n_prompt\":%u,\"n_gen\":%u,"
           "\"prefill_tps\":%.2f,\"gen_tps\":%.2f}\n",
           st.reason, st.n_prompt, st.n_gen, pp_tps, tg_tps);
  else {
    fputc('\n', stdout);
    fprintf(stderr, "llorch run: %u prompt tokens (%.1f tok/s), %u generated (%.1f tok/s), stop: %s\n",
            st.n_prompt, pp_tps, st.n_gen, tg_tps, st.reason);
  }
  llorch_sampler_free(smp);
  llorch_backend_close(&be);
  llorch_tokens_free(&history);
  llorch_tokenizer_free(tok);
  llorch_model_free(m);
  return 0;

fail_sampler:
  llorch_sampler_free(smp);
fail_backend:
  llorch_backend_close(&be);
fail:
  fprintf(stderr, "llorch run: %s: %s: %s\n", what, llorch_strerror(rc), em.text);
  llorch_tokens_free(&history);
  llorch_tokenizer_free(tok);
  llorch_model_free(m);
  return 1;
}
