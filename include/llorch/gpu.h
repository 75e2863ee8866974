/*
 * Device inventory for the pool manager: NVIDIA GPUs through NVML, loaded at
 * run time with dlopen("libnvidia-ml.so.1") so llorch has no build
 * dependency on the driver, and a CPU device when there is no GPU, so a whole
 * cluster runs (and is tested) on machines without one.
 *
 * LLORCH_NVML_LIBRARY in the environment names another library to load
 * instead (tests use a fake NVML; also useful for unusual driver installs).
 */
#ifndef LLORCH_GPU_H
#define LLORCH_GPU_H

#include <stdbool.h>
#include <stdint.h>

#include "llorch/error.h"

typedef enum llorch_device_kind {
  LLORCH_DEVICE_CPU = 0,
  LLORCH_DEVICE_CUDA = 1,
} llorch_device_kind;

typedef struct llorch_device_info {
  llorch_device_kind kind;
  int index;               /* CUDA/NVML ordinal; 0 for the CPU device */
  char id[16];             /* "cpu" or "gpu<index>": how pools and the orchestrator name it */
  char uuid[96];           /* "GPU-..." from NVML; "cpu-<hostname>" for the CPU device */
  char name[96];           /* "NVIDIA H100 80GB HBM3", "CPU" */
  uint64_t memory_total;   /* bytes */
  uint64_t memory_used;    /* bytes, as the device reports (all processes) */
  uint64_t memory_free;    /* bytes */
  int utilization_pct;     /* 0..100, -1 unknown */
  int temperature_c;       /* -1 unknown */
} llorch_device_info;

#define LLORCH_MAX_DEVICES 16

typedef struct llorch_gpu_inventory llorch_gpu_inventory;

typedef struct llorch_gpu_inventory_options {
  const int *gpus;          /* NVML indices to offer; NULL/0 = all */
  int n_gpus;
  uint64_t cpu_memory;      /* bytes the CPU device offers when there is no GPU; 0 = MemTotal */
  bool force_cpu;           /* ignore NVML even when present */
} llorch_gpu_inventory_options;

/*
 * Loads NVML if it can (its absence is not an error: the inventory then
 * offers one CPU device) and takes a first reading. A --gpus index that does
 * not exist is LLORCH_EINVAL naming it and the number of GPUs found.
 */
int llorch_gpu_inventory_open(llorch_gpu_inventory **out, const llorch_gpu_inventory_options *opt,
                              llorch_errmsg *em);
/* Re-reads memory, utilization and temperature of every offered device. */
int llorch_gpu_inventory_refresh(llorch_gpu_inventory *inv, llorch_errmsg *em);
void llorch_gpu_inventory_close(llorch_gpu_inventory *inv);

int llorch_gpu_inventory_count(const llorch_gpu_inventory *inv);
const llorch_device_info *llorch_gpu_inventory_get(const llorch_gpu_inventory *inv, int i);
/* "gpu1" / "cpu" -> the device, or NULL. */
const llorch_device_info *llorch_gpu_inventory_find(const llorch_gpu_inventory *inv, const char *id);
/* True when NVML was loaded and devices come from it. */
bool llorch_gpu_inventory_has_nvml(const llorch_gpu_inventory *inv);
/* The NVML library's driver version, or "" without NVML. */
const char *llorch_gpu_inventory_driver(const llorch_gpu_inventory *inv);

/* Parses "0,1,3" into indices; returns 0 or LLORCH_EINVAL naming the bad element. */
int llorch_gpu_list_parse(const char *s, int *out, int max, int *n_out, llorch_errmsg *em);

#endif /* LLORCH_GPU_H */
