/*
 * llorch_basic_main: the runtime alone. main() runs it for a role whose
 * module is not in this build, so every role already starts on its
 * listener, answers GET /health/live and GET /metrics, and shuts down
 * cleanly on SIGTERM/SIGINT.
 */
#include "llorch/log.h"
#include "llorch/roles.h"
#include "llorch/service.h"

int llorch_basic_main(const llorch_config *cfg) {
  llorch_service *svc;
  llorch_errmsg em = {{0}};
  const char *role = llorch_role_name(cfg->role);

  if (llorch_service_init(&svc, cfg, role, &em) != 0) {
    LOG_ERROR(role, NULL, "%s", em.text);
    return 1;
  }
  LOG_WARN(role, NULL, "the %s role is not built into this binary: serving /health/live and "
           "/metrics only", role);
  int status = llorch_service_run(svc, &em);
  if (status != 0 && em.text[0]) LOG_ERROR(role, NULL, "%s", em.text);
  llorch_service_free(svc);
  return status;
}
