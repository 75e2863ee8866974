/*
 * Loading the CUDA backend at run time. The backend (src/gpu/cuda/) is built
 * as libllorch_cuda.so next to the llorch binary; only a worker opening a
 * cuda:N device calls here, so the CUDA runtime and cuBLAS (hundreds of MiB of
 * mappings) never enter an orchestrator, a pool or a CPU worker.
 */
#include "llorch/backend_cuda.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static pthread_mutex_t module_lock = PTHREAD_MUTEX_INITIALIZER;
static const llorch_backend_ops *module_ops; /* once loaded; the module is never unloaded */

/* The directory of the running binary, from /proc/self/exe. */
static int module_default_path(char *out, size_t size) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return LLORCH_EIO;
  exe[n] = '\0';
  char *slash = strrchr(exe, '/');
  if (!slash) return LLORCH_EIO;
  *slash = '\0';
  int w = snprintf(out, size, "%s/%s", exe, LLORCH_CUDA_MODULE_NAME);
  return w < 0 || (size_t)w >= size ? LLORCH_EINVAL : 0;
}

int llorch_cuda_module_load(const llorch_backend_ops **out, llorch_errmsg *em) {
  pthread_mutex_lock(&module_lock);
  int rc = 0;
  if (module_ops) goto done;
  char path[PATH_MAX + 32];
  const char *env = getenv(LLORCH_CUDA_MODULE_ENV);
  if (env && env[0]) {
    snprintf(path, sizeof path, "%s", env);
  } else if (module_default_path(path, sizeof path) < 0) {
    rc = llorch_errmsg_set(em, LLORCH_EUNSUPPORTED,
                           "cannot find the CUDA backend: the binary's own path is unknown "
                           "(set %s to %s)",
                           LLORCH_CUDA_MODULE_ENV, LLORCH_CUDA_MODULE_NAME);
    goto done;
  }
  /* RTLD_NOW: a module that does not match this binary fails here, with the
   * missing symbol named, not in the middle of a request. */
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char *why = dlerror();
    rc = llorch_errmsg_set(em, LLORCH_EUNSUPPORTED,
                           "cannot load the CUDA backend %s: %s (it ships next to the llorch "
                           "binary of a CUDA build; %s names another path)",
                           path, why ? why : "unknown error", LLORCH_CUDA_MODULE_ENV);
    goto done;
  }
  const llorch_backend_ops *ops = dlsym(h, "llorch_backend_cuda_ops");
  if (!ops) {
    dlclose(h);
    rc = llorch_errmsg_set(em, LLORCH_EUNSUPPORTED,
                           "%s is not a llorch CUDA backend (no llorch_backend_cuda_ops)", path);
    goto done;
  }
  module_ops = ops;
done:
  if (!rc) *out = module_ops;
  pthread_mutex_unlock(&module_lock);
  return rc;
}
