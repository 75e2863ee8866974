/*
 * The pool manager role (src/roles/pool): one per machine. It reports the
 * machine's devices (include/llorch/gpu.h) and the GGUF models in its model
 * directories to the orchestrator, and starts and stops `llorch --role=worker`
 * processes when the orchestrator says so. It reports and obeys; it decides
 * nothing: it never restarts, evicts or moves a worker by itself. See
 * docs/cluster-protocol.md (the pool side, and its "pool notes").
 *
 * `llorch --role=pool` runs llorch_pool_main (roles.h). The pieces below let
 * `--role=all` put the orchestrator and a local pool manager on one service
 * (one loop, one port):
 *
 *   llorch_service_init(&svc, cfg, "all", &em);
 *   llorch_orchestrator_options oo = {.cluster_token = token};  (configured or internal)
 *   llorch_orchestrator_attach(&o, svc, &oo, &em);
 *   llorch_pool_options po = {.local_orchestrator = true, .cluster_token = token};
 *   llorch_pool_attach(&p, svc, &po, &em);
 *   status = llorch_service_run(svc, &em);
 *   llorch_service_free(svc);
 *   llorch_pool_free(p);
 *   llorch_orchestrator_free(o);
 */
#ifndef LLORCH_POOL_H
#define LLORCH_POOL_H

#include <stdbool.h>

#include "llorch/config.h"
#include "llorch/error.h"
#include "llorch/service.h"

typedef struct llorch_pool llorch_pool;

/* Overrides of the service's config for a pool that shares a process. */
typedef struct llorch_pool_options {
  /* Register with the orchestrator on this same service (its bound port on
   * 127.0.0.1) instead of cfg->pool.orchestrator. */
  bool local_orchestrator;
  /* The cluster token to present and require; NULL = cfg->pool.cluster_token. */
  const char *cluster_token;
} llorch_pool_options;

/*
 * Adds the pool manager to svc: the routes POST /v2/workers,
 * DELETE /v2/workers/{id}, POST /v2/workers/{id}/ready (the workers'
 * callback), GET /v2/state; the device inventory and model scan; the
 * heartbeat timer (registration starts once the loop runs); metrics; and a
 * shutdown hook that stops every worker (SIGTERM, pool.stop_grace, SIGKILL)
 * before the loop can end. opts may be NULL. Call before
 * llorch_service_run(). Returns 0, or a negative LLORCH_E* code with em (a
 * bad --gpus index, out of memory).
 */
int llorch_pool_attach(llorch_pool **out, llorch_service *svc, const llorch_pool_options *opts,
                       llorch_errmsg *em);

/* Frees the pool after llorch_service_run() returned (or after
 * llorch_service_free() of a service that never ran). NULL is ignored. */
void llorch_pool_free(llorch_pool *p);

#endif /* LLORCH_POOL_H */
