/*
 * Backend selection: a device string picks the ops table; the table's init
 * does the rest.
 */
#include "llorch/backend.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#ifdef LLORCH_HAVE_CUDA
#include "llorch/backend_cuda.h"
/* Weak: present only where the backend is linked in statically. */
extern const llorch_backend_ops llorch_backend_cuda_ops __attribute__((weak));
#endif

int llorch_device_parse(const char *device, bool *is_cuda, int *devices, int *n_devices,
                        llorch_errmsg *em) {
  *n_devices = 0;
  if (!device || strcmp(device, "cpu") == 0) {
    *is_cuda = false;
    return 0;
  }
  if (strncmp(device, "cuda:", 5) != 0)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "device '%.64s': expected cpu or cuda:N[,M...]",
                             device);
  *is_cuda = true;
  const char *s = device + 5;
  for (;;) {
    if (*s < '0' || *s > '9')
      return llorch_errmsg_set(em, LLORCH_EINVAL,
                               "device '%.64s': expected a GPU ordinal after 'cuda:' or ','", device);
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || v < 0 || v > 255)
      return llorch_errmsg_set(em, LLORCH_EINVAL, "device '%.64s': GPU ordinal out of range 0..255",
                               device);
    if (*n_devices >= 8)
      return llorch_errmsg_set(em, LLORCH_EINVAL, "device '%.64s': at most 8 GPUs", device);
    for (int i = 0; i < *n_devices; i++)
      if (devices[i] == (int)v)
        return llorch_errmsg_set(em, LLORCH_EINVAL, "device '%.64s': GPU %ld listed twice", device, v);
    devices[(*n_devices)++] = (int)v;
    if (*end == '\0') return 0;
    if (*end != ',')
      return llorch_errmsg_set(em, LLORCH_EINVAL, "device '%.64s': unexpected '%c'", device, *end);
    s = end + 1;
  }
}

int llorch_backend_open(llorch_backend *out, const llorch_model *m, const char *device,
                        const llorch_backend_params *p, llorch_errmsg *em) {
  memset(out, 0, sizeof *out);
  bool is_cuda = false;
  llorch_backend_params params = *p;
  int rc = llorch_device_parse(device, &is_cuda, params.devices, &params.n_devices, em);
  if (rc) return rc;
  const llorch_backend_ops *ops = &llorch_backend_cpu_ops;
  if (is_cuda) {
#ifdef LLORCH_HAVE_CUDA
    /* Linked in (the CUDA tests link the backend statically) or, in the
     * llorch binary, loaded from its module only now: no other process maps
     * the CUDA libraries. */
    if (&llorch_backend_cuda_ops != NULL) ops = &llorch_backend_cuda_ops;
    else if ((rc = llorch_cuda_module_load(&ops, em)) < 0) return rc;
#else
    return llorch_errmsg_set(em, LLORCH_EUNSUPPORTED,
                             "device '%.64s': this llorch was built without CUDA support", device);
#endif
  }
  rc = ops->init(&out->ctx, m, device ? device : "cpu", &params, em);
  if (rc) return rc;
  out->ops = ops;
  out->model = m;
  out->params = params;
  return 0;
}

void llorch_backend_close(llorch_backend *b) {
  if (b && b->ops) b->ops->free(b->ctx);
  if (b) memset(b, 0, sizeof *b);
}
