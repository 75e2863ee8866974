/*
 * The orchestrator role (src/roles/orchestrator): the cluster's one OpenAI
 * endpoint. It admits requests into priority queues, places models on the
 * pools' devices, starts, evicts and stops workers through the pools, relays
 * workers' token streams to clients, and recovers from dead workers and
 * pools. See docs/architecture.md and docs/cluster-protocol.md.
 *
 * `llorch --role=orchestrator` runs llorch_orchestrator_main (roles.h). The
 * pieces below let `--role=all` put the orchestrator and a local pool
 * manager on one service (one loop, one port).
 */
#ifndef LLORCH_ORCHESTRATOR_H
#define LLORCH_ORCHESTRATOR_H

#include "llorch/config.h"
#include "llorch/error.h"
#include "llorch/service.h"

typedef struct llorch_orchestrator llorch_orchestrator;

typedef struct llorch_orchestrator_options {
  /* The cluster token pools must present and the orchestrator presents to
   * them; NULL = cfg->orchestrator.cluster_token. --role=all passes the
   * configured one or a random internal one, so its cluster routes are never open. */
  const char *cluster_token;
} llorch_orchestrator_options;

/*
 * Adds the orchestrator to svc: its routes (/v1/..., /v2/pools/..., /v2/cluster,
 * /v2/models/..., /health/ready) with their credential classes, metrics,
 * timers and stop/shutdown hooks, using the service's config
 * (orchestrator.* options and the catalog). opts may be NULL. Call before
 * llorch_service_run(). Returns 0, or a negative LLORCH_E* code with em (a
 * bad catalog entry, out of memory).
 */
int llorch_orchestrator_attach(llorch_orchestrator **out, llorch_service *svc,
                               const llorch_orchestrator_options *opts, llorch_errmsg *em);

/* Frees the orchestrator after llorch_service_run() returned. NULL is ignored. */
void llorch_orchestrator_free(llorch_orchestrator *o);

#endif /* LLORCH_ORCHESTRATOR_H */
