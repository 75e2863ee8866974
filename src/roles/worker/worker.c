/*
 * The worker role's life: HTTP up first, the model loaded on a thread (so
 * /health/ready answers 503 meanwhile), the scheduler's inference thread
 * started, the pool told; on SIGTERM new work is refused, running streams
 * get the grace period, and the process exits 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "llorch/file.h"
#include "llorch/log.h"
#include "llorch/roles.h"
#include "llorch/service.h"
#include "worker-impl.h"

/* Most prompt tokens of one job in one step: bounds how long a decode step
 * of the other slots can be delayed by a newcomer's prefill. */
/* One prefill chunk per step besides the decode tokens: the memory estimate
 * counts the batch this makes. */
#define WORKER_PREFILL_CHUNK LLORCH_MEM_PREFILL_CHUNK
/* Positions per KV block: small enough that prefixes are reused at a fine
 * grain, large enough that block tables and per-block work stay cheap. */
#define WORKER_KV_BLOCK_TOKENS 16u

/* ---- metrics ---- */

static int worker_metrics_register(worker *w) {
  static const char *const outcome[] = {"outcome", NULL};
  static const char *const kind[] = {"kind", NULL};
  static const char *const state[] = {"state", NULL};
  static const double latency[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                   0.25,  0.5,    1,     2.5,  5,     10,   30};
  static const double batch[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
  llorch_metrics *m = w->metrics;
  w->m.requests = llorch_metrics_counter(m, "llorch_worker_requests_total",
                                         "Requests by outcome (completed, cancelled, failed, "
                                         "rejected, invalid).", outcome);
  w->m.prompt_tokens = llorch_metrics_counter(m, "llorch_worker_prompt_tokens_total",
                                              "Prompt tokens of finished requests.", NULL);
  w->m.generated_tokens = llorch_metrics_counter(m, "llorch_worker_generated_tokens_total",
                                                 "Tokens generated.", NULL);
  w->m.ttft = llorch_metrics_histogram(m, "llorch_worker_ttft_seconds",
                                       "Time from arrival to the first token.", NULL, latency,
                                       sizeof latency / sizeof *latency);
  w->m.inter_token = llorch_metrics_histogram(m, "llorch_worker_inter_token_seconds",
                                              "Time between tokens of one stream.", NULL, latency,
                                              sizeof latency / sizeof *latency);
  w->m.queue_wait = llorch_metrics_histogram(m, "llorch_worker_queue_wait_seconds",
                                             "Time waiting for a free slot.", NULL, latency,
                                             sizeof latency / sizeof *latency);
  w->m.slots_busy = llorch_metrics_gauge(m, "llorch_worker_slots_busy", "Slots running a request.",
                                         NULL);
  w->m.slots_total = llorch_metrics_gauge(m, "llorch_worker_slots_total", "Slots.", NULL);
  w->m.queue_depth = llorch_metrics_gauge(m, "llorch_worker_queue_depth",
                                          "Requests waiting for a slot.", NULL);
  w->m.batch_tokens = llorch_metrics_histogram(m, "llorch_worker_batch_tokens",
                                               "Entries (tokens) per engine step.", NULL, batch,
                                               sizeof batch / sizeof *batch);
  w->m.memory = llorch_metrics_gauge(m, "llorch_worker_memory_bytes",
                                     "Backend memory by kind (weights, kv, scratch).", kind);
  w->m.residency = llorch_metrics_gauge(
      m, "llorch_worker_residency_allocations",
      "Backend allocations by verified residency (device = VRAM; CPU backend: none checked).",
      state);
  w->m.prefix_queries = llorch_metrics_counter(
      m, "llorch_worker_prefix_cache_query_tokens_total",
      "Prompt tokens looked up in the prefix cache.", NULL);
  w->m.prefix_hits = llorch_metrics_counter(m, "llorch_worker_prefix_cache_hit_tokens_total",
                                            "Prompt tokens served from the prefix cache.", NULL);
  w->m.kv_blocks_used = llorch_metrics_gauge(m, "llorch_worker_kv_blocks_used",
                                             "KV cache blocks held by running requests.", NULL);
  w->m.kv_blocks_cached = llorch_metrics_gauge(
      m, "llorch_worker_kv_blocks_cached",
      "KV cache blocks held by no request but keeping a reusable prefix (evicted LRU).", NULL);
  w->m.kv_blocks_total = llorch_metrics_gauge(m, "llorch_worker_kv_blocks_total",
                                              "KV cache blocks in the pool.", NULL);
  w->m.preemptions = llorch_metrics_counter(
      m, "llorch_worker_preemptions_total",
      "Requests preempted for lack of KV blocks (resumed later by recomputing).", NULL);
  if (!w->m.requests || !w->m.prompt_tokens || !w->m.generated_tokens || !w->m.ttft ||
      !w->m.inter_token || !w->m.queue_wait || !w->m.slots_busy || !w->m.slots_total ||
      !w->m.queue_depth || !w->m.batch_tokens || !w->m.memory || !w->m.residency ||
      !w->m.prefix_queries || !w->m.prefix_hits || !w->m.kv_blocks_used ||
      !w->m.kv_blocks_cached || !w->m.kv_blocks_total || !w->m.preemptions)
    return LLORCH_ENOMEM;
  return 0;
}

void worker_metrics_refresh(worker *w) {
  if (!w->sched) return;
  worker_sched_stats ss;
  worker_sched_stats_get(w->sched, &ss);
  llorch_metric_set(w->m.slots_busy, NULL, ss.slots_busy);
  llorch_metric_set(w->m.queue_depth, NULL, ss.queued);
  llorch_metric_set(w->m.kv_blocks_used, NULL, ss.kv_blocks_used);
  llorch_metric_set(w->m.kv_blocks_cached, NULL, ss.kv_blocks_cached);
  llorch_metric_set(w->m.kv_blocks_total, NULL, ss.kv_blocks_total);
  /* the scheduler counts; the counters follow (this loop is their only writer) */
  llorch_metric_inc(w->m.prefix_queries, NULL,
                    (double)ss.prefix_query_tokens - llorch_metric_value(w->m.prefix_queries, NULL));
  llorch_metric_inc(w->m.prefix_hits, NULL,
                    (double)ss.prefix_hit_tokens - llorch_metric_value(w->m.prefix_hits, NULL));
  llorch_metric_inc(w->m.preemptions, NULL,
                    (double)ss.preemptions - llorch_metric_value(w->m.preemptions, NULL));
}

/* The scheduler calls this on the inference thread (metrics are thread-safe). */
/* Residency (VRAM-only) is re-verified this often. The check is a driver
 * query per allocation: cheap, but not worth doing every step. */
#define WORKER_RESIDENCY_INTERVAL_S 30

static void worker_publish_memory(worker *w, const llorch_backend_memory *mem) {
  uv_mutex_lock(&w->mem_lock);
  w->mem = *mem;
  uv_mutex_unlock(&w->mem_lock);
  llorch_metric_set(w->m.memory, (const char *[]){"weights"}, (double)mem->weights_bytes);
  llorch_metric_set(w->m.memory, (const char *[]){"kv"}, (double)mem->kv_bytes);
  llorch_metric_set(w->m.memory, (const char *[]){"scratch"}, (double)mem->scratch_bytes);
  llorch_metric_set(w->m.residency, (const char *[]){"device"},
                    (double)(mem->allocations_checked - mem->allocations_not_device));
  llorch_metric_set(w->m.residency, (const char *[]){"not_device"},
                    (double)mem->allocations_not_device);
}

/* On the inference thread, between forwards: the only place the backend may
 * be asked to verify itself, since nothing else touches it concurrently. */
static void worker_on_step(void *arg, uint32_t n_entries) {
  worker *w = arg;
  llorch_metric_observe(w->m.batch_tokens, NULL, n_entries);
  uint64_t now = uv_hrtime();
  if (now - w->mem_checked_ns < (uint64_t)WORKER_RESIDENCY_INTERVAL_S * 1000000000u) return;
  w->mem_checked_ns = now;
  if (w->backend.ops->verify_residency) {
    llorch_errmsg em = {{0}};
    if (w->backend.ops->verify_residency(w->backend.ctx, &em) < 0)
      LOG_ERROR("worker", NULL, "residency check failed: %s", em.text);
  }
  llorch_backend_memory mem;
  w->backend.ops->memory(w->backend.ctx, &mem);
  worker_publish_memory(w, &mem);
}

void worker_memory_get(worker *w, llorch_backend_memory *out) {
  uv_mutex_lock(&w->mem_lock);
  *out = w->mem;
  uv_mutex_unlock(&w->mem_lock);
}

uint64_t worker_memory_held(worker *w, llorch_mem_usage *usage) {
  llorch_mem_usage u;
  if (llorch_mem_usage_read(0, &u) < 0) memset(&u, 0, sizeof u);
  if (usage) *usage = u;
  if (strncmp(w->cfg->worker.device, "cuda", 4) != 0) return u.hwm_bytes;
  llorch_backend_memory mem;
  worker_memory_get(w, &mem);
  return mem.weights_bytes + mem.kv_bytes + mem.scratch_bytes + LLORCH_MEM_CUDA_RUNTIME_BYTES +
         LLORCH_MEM_CUDA_CONTEXT_BYTES;
}

/* ---- loading (on its own thread) ---- */

static void worker_load_thread(void *arg) {
  worker *w = arg;
  const llorch_config *cfg = w->cfg;
  llorch_errmsg em = {{0}};
  int rc = llorch_model_load(&w->model, cfg->worker.model, &em);
  if (rc < 0) {
    /* The loader's message already names the file. */
    if (em.text[0]) snprintf(w->load_error, sizeof w->load_error, "%s", em.text);
    else snprintf(w->load_error, sizeof w->load_error, "model %s: %s", cfg->worker.model,
                  llorch_strerror(rc));
    goto done;
  }
  rc = llorch_tokenizer_load(&w->tok, w->model->gguf, &em);
  if (rc < 0) {
    snprintf(w->load_error, sizeof w->load_error, "tokenizer of %s: %s", cfg->worker.model,
             em.text[0] ? em.text : llorch_strerror(rc));
    goto done;
  }
  /* the vocabulary trie every structured-output request masks with (built
   * once: ~0.3 s for 152k tokens) */
  rc = llorch_grammar_vocab_init(&w->gvocab, w->tok, &em);
  if (rc < 0) {
    snprintf(w->load_error, sizeof w->load_error, "grammar vocabulary of %s: %s",
             cfg->worker.model, em.text[0] ? em.text : llorch_strerror(rc));
    goto done;
  }
  /* compiled once; a model without a template serves completions only
   * unless the operator names one (worker.chat_template) */
  rc = llorch_chat_init_model(&w->chat, w->model->gguf, w->tok, cfg->worker.chat_template, &em);
  if (rc < 0 && rc != LLORCH_ENOMEM && !(cfg->worker.chat_template && rc == LLORCH_EIO)) {
    /* no template, or one that does not compile: completions still work */
    LOG_WARN("worker", NULL, "%s: %s; chat requests will be refused", cfg->worker.model, em.text);
    snprintf(w->chat_error, sizeof w->chat_error, "%s", em.text);
    rc = 0;
  } else if (rc < 0) {
    snprintf(w->load_error, sizeof w->load_error, "chat template of %s: %s", cfg->worker.model, em.text);
    goto done;
  }
  /* Tool calls are parsed in the syntax the model's template teaches it. */
  w->tool_format = cfg->worker.tool_call_format > 0
                       ? (llorch_tool_format)(cfg->worker.tool_call_format - 1)
                       : llorch_tool_format_detect(w->chat ? llorch_chat_tool_template(w->chat) : NULL);
  LOG_INFO("worker", NULL, "tool calls: %s format%s", llorch_tool_format_name(w->tool_format),
           cfg->worker.tool_call_format > 0 ? " (worker.tool_call_format)" : " (from the template)");
  uint32_t n_ctx = cfg->worker.ctx > 0 ? (uint32_t)cfg->worker.ctx : w->model->hp.n_ctx_train;
  if (!n_ctx) n_ctx = 2048;
  w->n_ctx = n_ctx;
  w->n_slots = (uint32_t)cfg->worker.slots;
  llorch_backend_params p = {0};
  p.n_ctx = n_ctx;
  p.n_seq = w->n_slots;
  /* The KV pool: by default the memory the slots reserved when each owned
   * ctx positions; slots are now only a cap on concurrent requests. */
  p.kv_block_tokens = WORKER_KV_BLOCK_TOKENS;
  if (cfg->worker.kv_cache_tokens > 0) {
    if ((uint32_t)cfg->worker.kv_cache_tokens < n_ctx) {
      snprintf(w->load_error, sizeof w->load_error,
               "worker.kv_cache_tokens %d is less than the context of %u tokens (one request "
               "must fit)", cfg->worker.kv_cache_tokens, n_ctx);
      goto done;
    }
    p.n_kv_blocks = ((uint32_t)cfg->worker.kv_cache_tokens + WORKER_KV_BLOCK_TOKENS - 1) /
                    WORKER_KV_BLOCK_TOKENS;
  }
  /* One decode token per slot plus one prefill chunk per step. */
  p.n_batch_max = w->n_slots + WORKER_PREFILL_CHUNK;
  p.n_threads = cfg->worker.threads > 0 ? cfg->worker.threads : (int)uv_available_parallelism();
  w->n_threads = p.n_threads;
  rc = llorch_backend_open(&w->backend, w->model, cfg->worker.device, &p, &em);
  if (rc < 0) {
    snprintf(w->load_error, sizeof w->load_error, "backend %s for %s: %s", cfg->worker.device,
             cfg->worker.model, em.text[0] ? em.text : llorch_strerror(rc));
    goto done;
  }
  w->backend_open = true;
  w->backend.ops->memory(w->backend.ctx, &w->mem);
  const llorch_mem_params mp = {.cuda = strncmp(cfg->worker.device, "cuda", 4) == 0,
                                .n_threads = p.n_threads};
  if (llorch_mem_estimate_compute(w->model->gguf, &mp, n_ctx, w->n_slots, &w->estimate, &em) < 0)
    memset(&w->estimate, 0, sizeof w->estimate); /* the model loaded: its header reads */
  w->mem_checked_ns = uv_hrtime();
done:
  uv_async_send(&w->load_done);
}

static void worker_on_events(uv_async_t *a) { worker_events_dispatch(a->data); }

static void worker_notify(void *arg) { uv_async_send(arg); }

static void worker_on_loaded(uv_async_t *a) {
  worker *w = a->data;
  uv_thread_join(&w->load_thread);
  w->load_thread_started = false;
  uv_close((uv_handle_t *)&w->load_done, NULL);
  if (w->stopping) return; /* SIGTERM while loading: the shutdown hook cleans up */
  if (!w->backend_open) {
    w->state = WORKER_STATE_FAILED;
    LOG_ERROR("worker", NULL, "loading failed: %s", w->load_error);
    w->exit_code = 1;
    worker_callback_start(w, true); /* exits when the report is done */
    return;
  }
  worker_sched_config sc = {.n_slots = w->n_slots,
                            .n_ctx = w->n_ctx,
                            .n_batch_max = w->backend.params.n_batch_max,
                            .prefill_chunk = WORKER_PREFILL_CHUNK,
                            .step_tokens = (uint32_t)w->cfg->worker.step_tokens,
                            .prefix_cache = w->cfg->worker.prefix_cache,
                            .queue_max = (uint32_t)w->cfg->worker.queue_max,
                            .queue_timeout_s = (double)w->cfg->worker.queue_timeout_ms / 1000.0,
                            .on_step = worker_on_step,
                            .on_step_arg = w};
  llorch_errmsg em = {{0}};
  if (worker_sched_init(&w->sched, &sc, &w->backend, w->tok, worker_notify, &w->events, &em) < 0 ||
      worker_sched_start(w->sched, &em) < 0) {
    snprintf(w->load_error, sizeof w->load_error, "%s", em.text);
    w->state = WORKER_STATE_FAILED;
    LOG_ERROR("worker", NULL, "starting the scheduler failed: %s", em.text);
    w->exit_code = 1;
    worker_callback_start(w, true);
    return;
  }
  llorch_metric_set(w->m.slots_total, NULL, w->n_slots);
  llorch_backend_memory mem = w->mem; /* the scheduler is running: publish a copy */
  worker_publish_memory(w, &mem);
  snprintf(w->model_name, sizeof w->model_name, "%s", w->model->name);
  w->state = WORKER_STATE_READY;
  LOG_INFO("worker", NULL,
           "ready: model %s (%s, %s, %llu params), ctx %u, %u slots on %s, weights %llu bytes "
           "(%s), KV %llu bytes (%s, %u blocks of %u tokens, prefix cache %s)",
           w->model_name, w->model->arch_name, llorch_type_name(w->model->main_type),
           (unsigned long long)w->model->n_params, w->n_ctx, w->n_slots, w->cfg->worker.device,
           (unsigned long long)w->mem.weights_bytes, w->mem.weights_location,
           (unsigned long long)w->mem.kv_bytes, w->mem.kv_location, w->mem.kv_blocks,
           w->mem.kv_block_tokens, w->cfg->worker.prefix_cache && w->mem.kv_blocks ? "on" : "off");
  worker_callback_start(w, false);
}

/* ---- shutdown ---- */

void worker_exit_after_callback(worker *w) { llorch_service_stop(w->svc, w->exit_code); }

static void worker_on_grace(uv_timer_t *t) {
  worker *w = t->data;
  /* Just before the HTTP server closes what is left: end the streams
   * ourselves, so clients get an error event rather than a cut connection. */
  if (w->sched) worker_sched_abort_running(w->sched);
}

static void worker_on_stop(llorch_service *svc, void *user) {
  worker *w = user;
  w->stopping = true;
  if (w->state == WORKER_STATE_READY) w->state = WORKER_STATE_DRAINING;
  if (w->sched) worker_sched_drain(w->sched);
  int64_t grace = w->cfg->shutdown_grace_ms;
  uv_timer_start(&w->grace_timer, worker_on_grace,
                 (uint64_t)(grace > 500 ? grace - 250 : grace / 2), 0);
}

static void worker_on_shutdown(llorch_service *svc, void *user) {
  worker *w = user;
  if (w->sched) {
    /* The inference thread stops after its current step; one more step here
     * ends whatever is left (draining + aborting), and dispatching frees
     * every stream and job. */
    worker_sched_abort_running(w->sched);
    worker_sched_stop(w->sched);
    worker_sched_step(w->sched);
    worker_events_dispatch(w);
  }
  if (w->load_thread_started) {
    /* A load in progress cannot be interrupted; wait for it. */
    uv_thread_join(&w->load_thread);
    w->load_thread_started = false;
    if (!uv_is_closing((uv_handle_t *)&w->load_done)) uv_close((uv_handle_t *)&w->load_done, NULL);
  }
  uv_close((uv_handle_t *)&w->events, NULL);
  uv_close((uv_handle_t *)&w->grace_timer, NULL);
  uv_close((uv_handle_t *)&w->cb_timer, NULL);
  if (w->client) {
    llorch_http_client_free(w->client);
    w->client = NULL;
  }
}

/* ---- test hook ---- */

/*
 * --test-script FILE: [{"match": "text in the prompt", "reply": "text"}].
 * A request whose rendered prompt contains a match gets that reply instead
 * of sampled tokens (tokenized, then replayed through the scheduler, the
 * detokenizer and the response path: everything but the sampler is real).
 * Tests need it because random weights never write a tool call. It cannot
 * be switched on by accident: the worker refuses to start with it unless
 * the environment has LLORCH_TEST_HOOKS=1. Workers a pool spawns get it
 * from the environment (LLORCH_TEST_SCRIPT=FILE, same condition), since the
 * pool passes no test flags on.
 */
static int worker_script_load(worker *w, const char *path) {
  const char *env = getenv("LLORCH_TEST_HOOKS");
  if (!env || strcmp(env, "1") != 0) {
    LOG_ERROR("worker", NULL,
              "worker.test_script (%s) is a test hook: it replaces sampling with scripted "
              "replies, so it is refused unless the environment has LLORCH_TEST_HOOKS=1",
              path);
    return LLORCH_EINVAL;
  }
  char *text = NULL;
  llorch_errmsg em = {{0}};
  int rc = llorch_file_read(path, "worker.test_script", 1u << 20, &text, NULL, &em);
  if (rc < 0) {
    LOG_ERROR("worker", NULL, "%s", em.text);
    return rc;
  }
  w->script = cJSON_Parse(text);
  free(text);
  bool ok = cJSON_IsArray(w->script);
  for (const cJSON *e = ok ? w->script->child : NULL; e && ok; e = e->next)
    ok = cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "match")) &&
         cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "reply"));
  if (!ok) {
    LOG_ERROR("worker", NULL,
              "worker.test_script %s: expected a JSON array of {\"match\": string, \"reply\": "
              "string} (at most 1 MiB)",
              path);
    return LLORCH_EINVAL;
  }
  LOG_WARN("worker", NULL, "TEST HOOK: scripted replies from %s replace sampling", path);
  return 0;
}

/* ---- entry point ---- */

static void worker_free_model(worker *w) {
  worker_sched_free(w->sched);
  w->sched = NULL;
  if (w->backend_open) llorch_backend_close(&w->backend);
  w->backend_open = false;
  llorch_chat_free(w->chat);
  w->chat = NULL;
  llorch_grammar_vocab_free(w->gvocab);
  w->gvocab = NULL;
  llorch_tokenizer_free(w->tok);
  w->tok = NULL;
  llorch_model_free(w->model);
  w->model = NULL;
}

int llorch_worker_main(const llorch_config *cfg) {
  llorch_errmsg em = {{0}};
  if (!cfg->worker.model) {
    LOG_ERROR("worker", NULL, "no model: give --model FILE (or worker.model in the config)");
    return 2;
  }
  worker *w = calloc(1, sizeof *w);
  if (!w) return 1;
  if (uv_mutex_init(&w->mem_lock) != 0) {
    free(w);
    return 1;
  }
  w->cfg = cfg;
  w->state = WORKER_STATE_LOADING;
  const char *slash = strrchr(cfg->worker.model, '/');
  snprintf(w->file_base, sizeof w->file_base, "%s", slash ? slash + 1 : cfg->worker.model);
  w->n_slots = (uint32_t)cfg->worker.slots;
  w->n_ctx = cfg->worker.ctx > 0 ? (uint32_t)cfg->worker.ctx : 0;
  /* The process before any model: what the estimate's per-process allowance
   * stands for, reported so the estimate can be checked against the rest. */
  llorch_mem_usage base;
  if (llorch_mem_usage_read(0, &base) == 0) w->baseline_bytes = base.rss_bytes;
  w->reasoning_default =
      cfg->worker.reasoning_format == 1 ? LLORCH_REASONING_NONE : LLORCH_REASONING_CONTENT;
  const char *script = cfg->worker.test_script ? cfg->worker.test_script : getenv("LLORCH_TEST_SCRIPT");
  if (script && script[0] && worker_script_load(w, script) < 0) {
    cJSON_Delete(w->script);
    uv_mutex_destroy(&w->mem_lock);
    free(w);
    return 2;
  }

  int status = 1;
  if (llorch_service_init(&w->svc, cfg, "worker", &em) < 0) {
    LOG_ERROR("worker", NULL, "%s", em.text);
    cJSON_Delete(w->script);
    uv_mutex_destroy(&w->mem_lock);
    free(w);
    return 1;
  }
  w->loop = llorch_service_loop(w->svc);
  w->metrics = llorch_service_metrics(w->svc);
  if (worker_metrics_register(w) < 0 ||
      llorch_service_route(w->svc, "GET", "/health/ready", LLORCH_ACCESS_PUBLIC, worker_route, w) < 0 ||
      llorch_service_route(w->svc, NULL, "/v1/*", LLORCH_ACCESS_CLUSTER, worker_route, w) < 0 ||
      llorch_service_route(w->svc, NULL, "/v2/*", LLORCH_ACCESS_CLUSTER, worker_route, w) < 0 ||
      llorch_service_on_stop(w->svc, worker_on_stop, w) < 0 ||
      llorch_service_on_shutdown(w->svc, worker_on_shutdown, w) < 0 ||
      /* The worker token is this role's machine credential: it guards /v1/...,
       * /v2/... and /metrics, checked when the headers arrive. */
      (cfg->worker.token &&
       llorch_service_add_credentials(w->svc, LLORCH_ACCESS_CLUSTER,
                                      (const char *const *)&cfg->worker.token, 1) < 0)) {
    LOG_ERROR("worker", NULL, "out of memory setting up");
    goto out;
  }
  if (!cfg->worker.token) llorch_service_open_access(w->svc, LLORCH_ACCESS_CLUSTER);
  if (cfg->worker.pool_callback && llorch_http_client_init(&w->client, w->loop, NULL) < 0) {
    LOG_ERROR("worker", NULL, "out of memory for the HTTP client");
    goto out;
  }
  /* The pool waits for our URL, so the port must be known before loading. */
  if (llorch_service_listen(w->svc, &em) < 0) {
    LOG_ERROR("worker", NULL, "%s", em.text);
    goto out;
  }
  int port_unused;
  llorch_service_parse_listen(cfg->listen, w->listen_host, sizeof w->listen_host, &port_unused);
  w->port = llorch_service_port(w->svc);
  LOG_INFO("worker", NULL, "listening on %s:%d; loading %s on %s", w->listen_host, w->port,
           cfg->worker.model, cfg->worker.device);

  uv_async_init(w->loop, &w->load_done, worker_on_loaded);
  w->load_done.data = w;
  uv_async_init(w->loop, &w->events, worker_on_events);
  w->events.data = w;
  uv_timer_init(w->loop, &w->grace_timer);
  w->grace_timer.data = w;
  uv_timer_init(w->loop, &w->cb_timer);
  w->cb_timer.data = w;
  if (uv_thread_create(&w->load_thread, worker_load_thread, w) != 0) {
    LOG_ERROR("worker", NULL, "cannot start the loading thread");
    uv_close((uv_handle_t *)&w->load_done, NULL);
    uv_close((uv_handle_t *)&w->events, NULL);
    uv_close((uv_handle_t *)&w->grace_timer, NULL);
    uv_close((uv_handle_t *)&w->cb_timer, NULL);
    goto out;
  }
  w->load_thread_started = true;

  status = llorch_service_run(w->svc, &em);
  if (status != 0 && em.text[0]) LOG_ERROR("worker", NULL, "%s", em.text);
  if (w->exit_code) status = w->exit_code;

out:
  llorch_service_free(w->svc);
  worker_free_model(w);
  free(w->cb_body);
  cJSON_Delete(w->script);
  uv_mutex_destroy(&w->mem_lock);
  free(w);
  return status;
}
