/*
 * The pool's models: a scan of its model directories for .gguf files, read
 * header-only (a pool with a hundred 70B models must not page in a byte of
 * weights to report them), the file-name rule that keeps requests inside the
 * directories, and the memory estimates the orchestrator plans with.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <uv.h>

#include "llorch/log.h"
#include "llorch/memory.h"
#include "llorch/model.h"
#include "pool-impl.h"

/* ---- names ---- */

int pool_file_name_check(const char *field, const char *name, llorch_errmsg *em) {
  size_t n = strlen(name);
  if (n == 0) return llorch_errmsg_set(em, LLORCH_EINVAL, "'%s' must not be empty", field);
  if (n >= POOL_FILE_MAX)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "'%s' is too long: %zu bytes, at most %d", field, n,
                             POOL_FILE_MAX - 1);
  /* No '/' at all: absolute paths and subdirectories are refused alike, so a
   * name can only ever mean a file directly inside a model directory. */
  if (strchr(name, '/') || strchr(name, '\\'))
    return llorch_errmsg_set(em, LLORCH_EINVAL,
                             "'%s' must be a file name inside a model directory (no '/'), got \"%.64s\"",
                             field, name);
  if (strstr(name, ".."))
    return llorch_errmsg_set(em, LLORCH_EINVAL, "'%s' must not contain \"..\", got \"%.64s\"", field,
                             name);
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
      return llorch_errmsg_set(em, LLORCH_EINVAL, "'%s' contains a control character (byte %zu)",
                               field, i);
  if (n < 6 || strcmp(name + n - 5, ".gguf") != 0)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "'%s' must name a .gguf file, got \"%.64s\"", field,
                             name);
  return 0;
}

/* ---- one file ---- */

/* Workers run as many threads as this process could (they inherit its CPU
 * affinity and are given no --threads): their attention rows scale with it. */
static llorch_mem_params model_mem_params(bool cuda) {
  llorch_mem_params mp = {.cuda = cuda, .n_threads = (int)uv_available_parallelism()};
  return mp;
}

int pool_model_read(const char *dir, const char *file, pool_model *out, llorch_errmsg *em) {
  char path[4096];
  if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, file) >= sizeof path)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "model path %s/%s is too long", dir, file);
  memset(out, 0, sizeof *out);
  struct stat st;
  if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
    return llorch_errmsg_set(em, LLORCH_ENOENT, "%s: no such model file", path);
  llorch_gguf *g = NULL;
  llorch_errmsg inner = {{0}};
  int rc = llorch_gguf_open(&g, path, LLORCH_GGUF_OPEN_HEADER_ONLY, &inner);
  if (rc < 0) return llorch_errmsg_set(em, rc, "%s: %s", path, inner.text);
  llorch_hparams hp;
  if ((rc = llorch_hparams_read(g, &hp, &inner)) < 0) {
    llorch_errmsg_set(em, rc, "%s: %s", path, inner.text);
    goto done;
  }
  llorch_gguf_str arch = {0};
  if (llorch_gguf_get_str(g, "general.architecture", &arch, &inner) == 0)
    snprintf(out->arch, sizeof out->arch, "%.*s", (int)(arch.len > 15 ? 15 : arch.len), arch.ptr);
  /* The quantization is the type holding most of the bytes: a Q4_K file
   * keeps its norms in F32, which should not decide its name. */
  uint64_t bytes_by_type[LLORCH_TYPE_COUNT] = {0};
  for (uint64_t i = 0; i < llorch_gguf_n_tensors(g); i++) {
    const llorch_gguf_tensor *t = llorch_gguf_tensor_at(g, i);
    uint64_t elems = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) elems *= t->ne[d];
    out->params += elems;
    out->tensor_bytes += t->nbytes;
    if ((unsigned)t->type < LLORCH_TYPE_COUNT) bytes_by_type[t->type] += t->nbytes;
  }
  int best = 0;
  for (int t = 1; t < LLORCH_TYPE_COUNT; t++)
    if (bytes_by_type[t] > bytes_by_type[best]) best = t;
  snprintf(out->quant, sizeof out->quant, "%s", llorch_type_name((llorch_ggml_type)best));
  out->ctx = hp.n_ctx_train;
  out->file_bytes = (uint64_t)st.st_size;
  out->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
  snprintf(out->file, sizeof out->file, "%s", file);
  size_t stem = strlen(file) - strlen(".gguf");
  snprintf(out->name, sizeof out->name, "%.*s", (int)stem, file);
  const llorch_mem_params cpu = model_mem_params(false), cuda = model_mem_params(true);
  if ((rc = llorch_mem_coeffs_compute(g, &cpu, &out->est[LLORCH_DEVICE_CPU], &inner)) < 0 ||
      (rc = llorch_mem_coeffs_compute(g, &cuda, &out->est[LLORCH_DEVICE_CUDA], &inner)) < 0)
    llorch_errmsg_set(em, rc, "%s: %s", path, inner.text);
done:
  llorch_gguf_close(g);
  return rc;
}

int pool_model_locate(const llorch_strlist *dirs, const char *file, char *path, size_t size) {
  if (!path || size == 0) return LLORCH_EINVAL;
  for (size_t i = 0; i < dirs->count; i++) {
    struct stat st;
    if ((size_t)snprintf(path, size, "%s/%s", dirs->items[i], file) >= size) continue;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) return 0;
  }
  path[0] = '\0';
  return LLORCH_ENOENT;
}

int pool_model_need(const char *path, uint32_t ctx, uint32_t slots, bool for_gpu, uint64_t *need,
                    uint32_t *ctx_train, llorch_errmsg *em) {
  llorch_gguf *g = NULL;
  llorch_errmsg inner = {{0}};
  int rc = llorch_gguf_open(&g, path, LLORCH_GGUF_OPEN_HEADER_ONLY, &inner);
  if (rc < 0) return llorch_errmsg_set(em, rc, "%s: %s", path, inner.text);
  llorch_hparams hp;
  llorch_mem_coeffs c;
  const llorch_mem_params mp = model_mem_params(for_gpu);
  if ((rc = llorch_hparams_read(g, &hp, &inner)) < 0 ||
      (rc = llorch_mem_coeffs_compute(g, &mp, &c, &inner)) < 0) {
    llorch_errmsg_set(em, rc, "%s: %s", path, inner.text);
    goto done;
  }
  if (ctx == 0) ctx = hp.n_ctx_train;
  *ctx_train = hp.n_ctx_train;
  *need = llorch_mem_need(&c, ctx, slots);
done:
  llorch_gguf_close(g);
  return rc;
}

/* ---- directory scan ---- */

static const pool_model *scan_find(const pool_model *ms, int n, const char *file) {
  for (int i = 0; i < n; i++)
    if (strcmp(ms[i].file, file) == 0) return &ms[i];
  return NULL;
}

int pool_models_scan(const llorch_strlist *dirs, const pool_model *prev, int n_prev,
                     pool_model **out, int *n_out) {
  pool_model *ms = NULL;
  int n = 0, cap = 0;
  for (size_t d = 0; d < dirs->count; d++) {
    const char *dir = dirs->items[d];
    DIR *dh = opendir(dir);
    if (!dh) {
      LOG_DEBUG("pool", NULL, "model directory %s cannot be read", dir);
      continue;
    }
    struct dirent *de;
    while ((de = readdir(dh)) != NULL) {
      llorch_errmsg em = {{0}};
      if (pool_file_name_check("file", de->d_name, &em) < 0) continue;
      if (scan_find(ms, n, de->d_name)) continue; /* an earlier directory has it */
      if (n == cap) {
        int ncap = cap ? 2 * cap : 16;
        pool_model *nm = realloc(ms, (size_t)ncap * sizeof *nm);
        if (!nm) {
          closedir(dh);
          free(ms);
          return LLORCH_ENOMEM;
        }
        ms = nm;
        cap = ncap;
      }
      char path[4096];
      struct stat st;
      if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= sizeof path ||
          stat(path, &st) != 0 || !S_ISREG(st.st_mode))
        continue;
      const pool_model *old = scan_find(prev, n_prev, de->d_name);
      int64_t mtime = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
      if (old && old->mtime_ns == mtime && old->file_bytes == (uint64_t)st.st_size) {
        ms[n++] = *old;
        continue;
      }
      if (pool_model_read(dir, de->d_name, &ms[n], &em) < 0) {
        /* Kept as a bad entry, so an unchanged bad file is neither re-read
         * nor re-reported on every scan. */
        LOG_WARN("pool", NULL, "skipping %s", em.text);
        memset(&ms[n], 0, sizeof ms[n]);
        snprintf(ms[n].file, sizeof ms[n].file, "%s", de->d_name);
        ms[n].file_bytes = (uint64_t)st.st_size;
        ms[n].mtime_ns = mtime;
        ms[n].bad = true;
        n++;
        continue;
      }
      LOG_INFO("pool", NULL, "model %s: %s %s, %llu params, ctx %u, %llu tensor bytes", path,
               ms[n].arch, ms[n].quant, (unsigned long long)ms[n].params, ms[n].ctx,
               (unsigned long long)ms[n].tensor_bytes);
      n++;
    }
    closedir(dh);
  }
  *out = ms;
  *n_out = n;
  return 0;
}
