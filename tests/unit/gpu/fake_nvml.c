/*
 * A fake libnvidia-ml for the inventory tests: two GPUs with fixed numbers,
 * loaded through LLORCH_NVML_LIBRARY exactly as the real one is.
 */
#include <stdio.h>
#include <string.h>

typedef struct {
  unsigned long long total, free, used;
} fake_memory;
typedef struct {
  unsigned int gpu, memory;
} fake_util;

/* Exported with NVML's names; prototypes here keep -Wmissing-prototypes quiet. */
int nvmlInit_v2(void);
int nvmlShutdown(void);
int nvmlDeviceGetCount_v2(unsigned int *n);
int nvmlDeviceGetHandleByIndex_v2(unsigned int i, void **h);
int nvmlDeviceGetName(void *h, char *buf, unsigned int len);
int nvmlDeviceGetUUID(void *h, char *buf, unsigned int len);
int nvmlDeviceGetMemoryInfo(void *h, fake_memory *m);
int nvmlDeviceGetUtilizationRates(void *h, fake_util *u);
int nvmlDeviceGetTemperature(void *h, int sensor, unsigned int *t);
int nvmlSystemGetDriverVersion(char *buf, unsigned int len);
const char *nvmlErrorString(int rc);

static int initialized;
static int reads; /* memory reads so far: the "used" figure grows per read */

int nvmlInit_v2(void) { initialized = 1; return 0; }
int nvmlShutdown(void) { initialized = 0; return 0; }
int nvmlDeviceGetCount_v2(unsigned int *n) { *n = 2; return initialized ? 0 : 1; }
int nvmlDeviceGetHandleByIndex_v2(unsigned int i, void **h) {
  if (i >= 2) return 2;
  *h = (void *)(unsigned long)(i + 1);
  return 0;
}
int nvmlDeviceGetName(void *h, char *buf, unsigned int len) {
  snprintf(buf, len, "Fake H100 #%lu", (unsigned long)h - 1);
  return 0;
}
int nvmlDeviceGetUUID(void *h, char *buf, unsigned int len) {
  snprintf(buf, len, "GPU-fake-%lu", (unsigned long)h - 1);
  return 0;
}
int nvmlDeviceGetMemoryInfo(void *h, fake_memory *m) {
  unsigned long long gib = 1ull << 30;
  m->total = 80 * gib;
  m->used = ((unsigned long)h) * gib + (unsigned long long)reads++ * (1ull << 20);
  m->free = m->total - m->used;
  return 0;
}
int nvmlDeviceGetUtilizationRates(void *h, fake_util *u) { u->gpu = 42; u->memory = 7; return 0; }
int nvmlDeviceGetTemperature(void *h, int sensor, unsigned int *t) { *t = 55; return 0; }
int nvmlSystemGetDriverVersion(char *buf, unsigned int len) { snprintf(buf, len, "999.1"); return 0; }
const char *nvmlErrorString(int rc) { return rc ? "fake error" : "success"; }
