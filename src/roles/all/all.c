/*
 * `llorch --role=all`: the orchestrator and a local pool manager on one
 * service (one loop, one port), for one machine. The pool registers with the
 * orchestrator over loopback HTTP like any other pool, so the two talk the
 * same protocol as in a cluster and nothing here is a special case.
 *
 * Except one thing: the cluster routes of this process must not be open to
 * whoever reaches its port. Without a configured cluster token the two
 * halves share a random internal one that never leaves the process (the
 * pool's workers get their own tokens), so no outside pool can register and
 * nobody outside can start, stop or list workers here.
 */
#include "llorch/log.h"
#include "llorch/orchestrator.h"
#include "llorch/pool.h"
#include "llorch/reqid.h"
#include "llorch/roles.h"

int llorch_all_main(const llorch_config *cfg) {
  llorch_errmsg em = {{0}};
  llorch_service *svc = NULL;
  llorch_orchestrator *o = NULL;
  llorch_pool *p = NULL;
  int status = 1;
  char internal[65];
  const char *token = cfg->orchestrator.cluster_token;
  if (!token) {
    if (llorch_random_hex(internal, 32) < 0) {
      LOG_ERROR("all", NULL, "no random source for the internal cluster token");
      return 1;
    }
    token = internal;
  }
  if (llorch_service_init(&svc, cfg, "all", &em) < 0) {
    LOG_ERROR("all", NULL, "%s", em.text);
    return 1;
  }
  llorch_orchestrator_options oo = {.cluster_token = token};
  if (llorch_orchestrator_attach(&o, svc, &oo, &em) < 0) goto fail;
  llorch_pool_options po = {.local_orchestrator = true, .cluster_token = token};
  if (llorch_pool_attach(&p, svc, &po, &em) < 0) goto fail;
  status = llorch_service_run(svc, &em);
  if (status != 0 && em.text[0]) LOG_ERROR("all", NULL, "%s", em.text);
  llorch_service_free(svc);
  llorch_pool_free(p);
  llorch_orchestrator_free(o);
  return status;

fail:
  LOG_ERROR("all", NULL, "%s", em.text);
  llorch_service_free(svc);
  llorch_pool_free(p);
  llorch_orchestrator_free(o);
  return 1;
}
