/*
 * Device inventory: NVML through dlopen, or one CPU device.
 *
 * NVML is a C API with a stable ABI; we declare the few entry points we use
 * with our own minimal types instead of including nvml.h, so the build needs
 * nothing from the driver and the pool runs unchanged on GPU-less machines.
 */
#include "llorch/gpu.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- the slice of NVML we use ---- */

typedef int nvml_return;          /* nvmlReturn_t; 0 = NVML_SUCCESS */
typedef struct nvml_device_st *nvml_device;
typedef struct {
  unsigned long long total, free, used; /* bytes */
} nvml_memory;
typedef struct {
  unsigned int gpu, memory; /* percent */
} nvml_utilization;
#define NVML_TEMPERATURE_GPU 0

typedef struct nvml_api {
  void *lib;
  nvml_return (*init)(void);
  nvml_return (*shutdown)(void);
  nvml_return (*device_count)(unsigned int *);
  nvml_return (*device_by_index)(unsigned int, nvml_device *);
  nvml_return (*device_name)(nvml_device, char *, unsigned int);
  nvml_return (*device_uuid)(nvml_device, char *, unsigned int);
  nvml_return (*device_memory)(nvml_device, nvml_memory *);
  nvml_return (*device_utilization)(nvml_device, nvml_utilization *);
  nvml_return (*device_temperature)(nvml_device, int, unsigned int *);
  nvml_return (*driver_version)(char *, unsigned int);
  const char *(*error_string)(nvml_return);
} nvml_api;

struct llorch_gpu_inventory {
  nvml_api nvml;                 /* nvml.lib == NULL: no NVML */
  int n_devices;
  llorch_device_info devices[LLORCH_MAX_DEVICES];
  nvml_device handles[LLORCH_MAX_DEVICES];
  uint64_t cpu_memory;           /* bytes offered by the CPU device; 0 = MemTotal */
  char driver[64];
};

/* Resolves sym (trying versioned names first, as NVML exports both). */
static void *nvml_sym(void *lib, const char *v2, const char *v1) {
  void *p = v2 ? dlsym(lib, v2) : NULL;
  return p ? p : dlsym(lib, v1);
}

static const char *nvml_err(const nvml_api *api, nvml_return rc) {
  return api->error_string ? api->error_string(rc) : "NVML error";
}

/* Returns 0 with api->lib set, or 0 with api->lib NULL when NVML is absent
 * or unusable (logged by the caller as "no GPUs"), never an error. */
static void nvml_load(nvml_api *api) {
  memset(api, 0, sizeof *api);
  const char *path = getenv("LLORCH_NVML_LIBRARY");
  void *lib = dlopen(path && *path ? path : "libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL) return;

  api->init = (nvml_return(*)(void))nvml_sym(lib, "nvmlInit_v2", "nvmlInit");
  api->shutdown = (nvml_return(*)(void))nvml_sym(lib, NULL, "nvmlShutdown");
  api->device_count = (nvml_return(*)(unsigned int *))nvml_sym(lib, "nvmlDeviceGetCount_v2", "nvmlDeviceGetCount");
  api->device_by_index = (nvml_return(*)(unsigned int, nvml_device *))nvml_sym(
      lib, "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetHandleByIndex");
  api->device_name = (nvml_return(*)(nvml_device, char *, unsigned int))nvml_sym(lib, NULL, "nvmlDeviceGetName");
  api->device_uuid = (nvml_return(*)(nvml_device, char *, unsigned int))nvml_sym(lib, NULL, "nvmlDeviceGetUUID");
  api->device_memory = (nvml_return(*)(nvml_device, nvml_memory *))nvml_sym(lib, NULL, "nvmlDeviceGetMemoryInfo");
  api->device_utilization = (nvml_return(*)(nvml_device, nvml_utilization *))nvml_sym(
      lib, NULL, "nvmlDeviceGetUtilizationRates");
  api->device_temperature = (nvml_return(*)(nvml_device, int, unsigned int *))nvml_sym(
      lib, NULL, "nvmlDeviceGetTemperature");
  api->driver_version = (nvml_return(*)(char *, unsigned int))nvml_sym(lib, NULL, "nvmlSystemGetDriverVersion");
  api->error_string = (const char *(*)(nvml_return))nvml_sym(lib, NULL, "nvmlErrorString");

  /* The first five are what an inventory cannot do without. */
  if (!api->init || !api->shutdown || !api->device_count || !api->device_by_index ||
      !api->device_memory || api->init() != 0) {
    dlclose(lib);
    memset(api, 0, sizeof *api);
    return;
  }
  api->lib = lib;
}

static void nvml_unload(nvml_api *api) {
  if (api->lib == NULL) return;
  api->shutdown();
  dlclose(api->lib);
  memset(api, 0, sizeof *api);
}

/* ---- the CPU device ---- */

/* Reads "Key:   12345 kB" from /proc/meminfo; 0 when absent. */
static uint64_t meminfo_bytes(const char *key) {
  FILE *f = fopen("/proc/meminfo", "r");
  if (f == NULL) return 0;
  char line[256];
  uint64_t kb = 0;
  size_t klen = strlen(key);
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
      kb = strtoull(line + klen + 1, NULL, 10);
      break;
    }
  }
  fclose(f);
  return kb * 1024;
}

static void cpu_device_read(llorch_gpu_inventory *inv, llorch_device_info *d) {
  uint64_t total = meminfo_bytes("MemTotal");
  uint64_t avail = meminfo_bytes("MemAvailable");
  if (inv->cpu_memory != 0) {
    /* An operator-sized CPU device: what it offers is the configured amount,
     * capped by what the machine really has available. */
    d->memory_total = inv->cpu_memory;
    d->memory_free = avail < inv->cpu_memory ? avail : inv->cpu_memory;
  } else {
    d->memory_total = total;
    d->memory_free = avail;
  }
  d->memory_used = d->memory_total - d->memory_free;
}

/* ---- inventory ---- */

static int nvml_read_device(llorch_gpu_inventory *inv, int slot, llorch_errmsg *em) {
  nvml_api *api = &inv->nvml;
  llorch_device_info *d = &inv->devices[slot];
  nvml_memory mem;
  nvml_return rc = api->device_memory(inv->handles[slot], &mem);
  if (rc != 0)
    return llorch_errmsg_set(em, LLORCH_EDEVICE, "NVML: memory info of GPU %d: %s", d->index,
                             nvml_err(api, rc));
  d->memory_total = mem.total;
  d->memory_free = mem.free;
  d->memory_used = mem.used;

  nvml_utilization util;
  d->utilization_pct = -1;
  if (api->device_utilization && api->device_utilization(inv->handles[slot], &util) == 0)
    d->utilization_pct = (int)util.gpu;
  unsigned int temp;
  d->temperature_c = -1;
  if (api->device_temperature &&
      api->device_temperature(inv->handles[slot], NVML_TEMPERATURE_GPU, &temp) == 0)
    d->temperature_c = (int)temp;
  return 0;
}

static bool gpu_allowed(const llorch_gpu_inventory_options *opt, int index) {
  if (opt == NULL || opt->n_gpus == 0) return true;
  for (int i = 0; i < opt->n_gpus; i++)
    if (opt->gpus[i] == index) return true;
  return false;
}

int llorch_gpu_inventory_open(llorch_gpu_inventory **out, const llorch_gpu_inventory_options *opt,
                              llorch_errmsg *em) {
  int err;
  llorch_gpu_inventory *inv = calloc(1, sizeof *inv);
  if (inv == NULL) return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");
  inv->cpu_memory = opt ? opt->cpu_memory : 0;

  if (opt == NULL || !opt->force_cpu) nvml_load(&inv->nvml);

  unsigned int count = 0;
  if (inv->nvml.lib != NULL) {
    nvml_return rc = inv->nvml.device_count(&count);
    if (rc != 0) {
      err = llorch_errmsg_set(em, LLORCH_EDEVICE, "NVML: device count: %s", nvml_err(&inv->nvml, rc));
      goto fail;
    }
    if (inv->nvml.driver_version) inv->nvml.driver_version(inv->driver, sizeof inv->driver);
  }

  /* Every requested index must exist: a typo in --gpus must not silently
   * offer fewer GPUs than the operator thinks. */
  for (int i = 0; opt != NULL && i < opt->n_gpus; i++) {
    if (opt->gpus[i] < 0 || (unsigned)opt->gpus[i] >= count) {
      err = llorch_errmsg_set(em, LLORCH_EINVAL, "--gpus: GPU %d does not exist (%u NVIDIA GPU%s found)",
                              opt->gpus[i], count, count == 1 ? "" : "s");
      goto fail;
    }
  }

  for (unsigned int i = 0; i < count && inv->n_devices < LLORCH_MAX_DEVICES; i++) {
    if (!gpu_allowed(opt, (int)i)) continue;
    int slot = inv->n_devices;
    llorch_device_info *d = &inv->devices[slot];
    nvml_return rc = inv->nvml.device_by_index(i, &inv->handles[slot]);
    if (rc != 0) {
      err = llorch_errmsg_set(em, LLORCH_EDEVICE, "NVML: handle of GPU %u: %s", i, nvml_err(&inv->nvml, rc));
      goto fail;
    }
    d->kind = LLORCH_DEVICE_CUDA;
    d->index = (int)i;
    snprintf(d->id, sizeof d->id, "gpu%u", i);
    if (!inv->nvml.device_name || inv->nvml.device_name(inv->handles[slot], d->name, sizeof d->name) != 0)
      snprintf(d->name, sizeof d->name, "NVIDIA GPU %u", i);
    if (!inv->nvml.device_uuid || inv->nvml.device_uuid(inv->handles[slot], d->uuid, sizeof d->uuid) != 0)
      d->uuid[0] = '\0';
    inv->n_devices++;
    if ((err = nvml_read_device(inv, slot, em)) < 0) goto fail;
  }

  if (inv->n_devices == 0) {
    llorch_device_info *d = &inv->devices[0];
    d->kind = LLORCH_DEVICE_CPU;
    d->index = 0;
    snprintf(d->id, sizeof d->id, "cpu");
    snprintf(d->name, sizeof d->name, "CPU");
    char host[64] = "localhost";
    gethostname(host, sizeof host - 1);
    snprintf(d->uuid, sizeof d->uuid, "cpu-%s", host);
    d->utilization_pct = -1;
    d->temperature_c = -1;
    cpu_device_read(inv, d);
    inv->n_devices = 1;
  }
  *out = inv;
  return 0;

fail:
  nvml_unload(&inv->nvml);
  free(inv);
  return err;
}

int llorch_gpu_inventory_refresh(llorch_gpu_inventory *inv, llorch_errmsg *em) {
  for (int i = 0; i < inv->n_devices; i++) {
    llorch_device_info *d = &inv->devices[i];
    if (d->kind == LLORCH_DEVICE_CPU) {
      cpu_device_read(inv, d);
    } else {
      int err = nvml_read_device(inv, i, em);
      if (err < 0) return err;
    }
  }
  return 0;
}

void llorch_gpu_inventory_close(llorch_gpu_inventory *inv) {
  if (inv == NULL) return;
  nvml_unload(&inv->nvml);
  free(inv);
}

int llorch_gpu_inventory_count(const llorch_gpu_inventory *inv) { return inv->n_devices; }

const llorch_device_info *llorch_gpu_inventory_get(const llorch_gpu_inventory *inv, int i) {
  return i >= 0 && i < inv->n_devices ? &inv->devices[i] : NULL;
}

const llorch_device_info *llorch_gpu_inventory_find(const llorch_gpu_inventory *inv, const char *id) {
  for (int i = 0; i < inv->n_devices; i++)
    if (strcmp(inv->devices[i].id, id) == 0) return &inv->devices[i];
  return NULL;
}

bool llorch_gpu_inventory_has_nvml(const llorch_gpu_inventory *inv) { return inv->nvml.lib != NULL; }

const char *llorch_gpu_inventory_driver(const llorch_gpu_inventory *inv) { return inv->driver; }

int llorch_gpu_list_parse(const char *s, int *out, int max, int *n_out, llorch_errmsg *em) {
  int n = 0;
  const char *p = s;
  while (*p) {
    char *end;
    errno = 0;
    long v = strtol(p, &end, 10);
    if (end == p || errno != 0 || v < 0 || v > 1023 || (*end != ',' && *end != '\0'))
      return llorch_errmsg_set(em, LLORCH_EINVAL,
                               "GPU list '%s': expected comma-separated GPU indices like 0,1, got '%.*s'",
                               s, (int)strcspn(p, ","), p);
    if (n == max)
      return llorch_errmsg_set(em, LLORCH_EINVAL, "GPU list '%s': more than %d GPUs", s, max);
    for (int i = 0; i < n; i++)
      if (out[i] == (int)v)
        return llorch_errmsg_set(em, LLORCH_EINVAL, "GPU list '%s': GPU %ld listed twice", s, v);
    out[n++] = (int)v;
    p = *end == ',' ? end + 1 : end;
    if (*end == ',' && *p == '\0')
      return llorch_errmsg_set(em, LLORCH_EINVAL, "GPU list '%s': trailing comma", s);
  }
  *n_out = n;
  return 0;
}
