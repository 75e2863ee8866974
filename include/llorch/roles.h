/*
 * The roles' entry points, called once by main() after the configuration is
 * loaded. Each runs its role to the end (an event loop built with
 * include/llorch/service.h) and returns the process exit status: 0 after a
 * clean shutdown (SIGTERM/SIGINT), 1 after a failure at run time. cfg stays
 * valid until the function returns.
 *
 * Each is defined by its role's module (src/roles/<role>/).
 */
#ifndef LLORCH_ROLES_H
#define LLORCH_ROLES_H

#include "llorch/config.h"

/* src/roles/worker: one model served over HTTP (issue 4). */
int llorch_worker_main(const llorch_config *cfg);
/* src/roles/pool: devices, models, worker processes (issue 5). */
int llorch_pool_main(const llorch_config *cfg);
/* src/roles/orchestrator: admission, placement, relay (issue 5). */
int llorch_orchestrator_main(const llorch_config *cfg);
/* src/roles/all: the orchestrator and a local pool manager in one process
 * on one loop (issue 5). */
int llorch_all_main(const llorch_config *cfg);

#endif /* LLORCH_ROLES_H */
