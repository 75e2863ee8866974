/*
 * POST /v1/embeddings for both roles: the request checked field by field
 * (the orchestrator before queueing, the worker again before running, with
 * the same words), the body the orchestrator forwards, and the answer.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/openai.h"
#include "openai-impl.h"

#define EMB_BAD(param, ...) \
  llorch_openai_fail(err, 400, "invalid_request_error", "invalid_value", (param), __VA_ARGS__)

/* ---- request ---- */

/* A list of token ids at where: non-empty, integers in [0, 2^31), bounded. */
static int embed_check_ids(const cJSON *a, const char *where, llorch_openai_error *err) {
  char desc[64];
  int n = cJSON_GetArraySize(a);
  if (n == 0) return EMB_BAD(where, "'%s' is an empty list of token ids; at least 1 is needed", where);
  if (n > LLORCH_OPENAI_MAX_EMBED_TOKENS)
    return EMB_BAD(where, "'%s' has %d token ids; at most %d are accepted per input", where, n,
                   LLORCH_OPENAI_MAX_EMBED_TOKENS);
  int i = 0;
  for (const cJSON *e = a->child; e; e = e->next, i++) {
    if (cJSON_IsNumber(e) && e->valuedouble >= 0 && e->valuedouble < 2147483648.0 &&
        e->valuedouble == floor(e->valuedouble))
      continue;
    char p[96];
    snprintf(p, sizeof p, "%s[%d]", where, i);
    return EMB_BAD(p, "'%s' must be a token id (an integer >= 0), got %s", p,
                   llorch_json_describe(e, desc, sizeof desc));
  }
  return 0;
}

static int embed_check_input(const cJSON *in, llorch_openai_embed_request *out,
                             llorch_openai_error *err) {
  char desc[64];
  if (!in || cJSON_IsNull(in))
    return llorch_openai_fail(err, 400, "invalid_request_error", "missing_field", "input",
                              "'input' is required (a string, a list of strings, a list of token "
                              "ids or a list of such lists)");
  if (cJSON_IsString(in)) {
    if (!in->valuestring[0]) return EMB_BAD("input", "'input' is an empty string; nothing to embed");
    out->n_inputs = 1;
    return 0;
  }
  if (!cJSON_IsArray(in))
    return EMB_BAD("input", "'input' must be a string, a list of strings, a list of token ids or "
                            "a list of such lists, got %s", llorch_json_describe(in, desc, sizeof desc));
  const int n = cJSON_GetArraySize(in);
  if (n == 0) return EMB_BAD("input", "'input' is an empty list; at least 1 input is needed");
  const cJSON *first = in->child;
  if (cJSON_IsNumber(first)) { /* one input as token ids */
    out->ids = true;
    out->n_inputs = 1;
    return embed_check_ids(in, "input", err);
  }
  if (n > LLORCH_OPENAI_MAX_EMBED_INPUTS)
    return EMB_BAD("input", "'input' has %d items; at most %d are accepted per request", n,
                   LLORCH_OPENAI_MAX_EMBED_INPUTS);
  out->ids = cJSON_IsArray(first);
  int i = 0;
  for (const cJSON *e = first; e; e = e->next, i++) {
    char p[64];
    llorch_json_path_index(p, sizeof p, NULL, "input", (size_t)i);
    if (out->ids) {
      if (!cJSON_IsArray(e))
        return EMB_BAD(p, "'%s' must be a list of token ids like the other items, got %s", p,
                       llorch_json_describe(e, desc, sizeof desc));
      int rc = embed_check_ids(e, p, err);
      if (rc < 0) return rc;
    } else if (!cJSON_IsString(e)) {
      return EMB_BAD(p, "'%s' must be a string like the other items, got %s", p,
                     llorch_json_describe(e, desc, sizeof desc));
    } else if (!e->valuestring[0]) {
      return EMB_BAD(p, "'%s' is an empty string; nothing to embed", p);
    }
  }
  out->n_inputs = n;
  return 0;
}

int llorch_openai_embed_parse(const cJSON *body, llorch_openai_embed_request *out,
                              llorch_openai_error *err) {
  memset(out, 0, sizeof *out);
  char desc[64];
  if (!cJSON_IsObject(body)) return EMB_BAD(NULL, "the request body must be a JSON object");
  const cJSON *model = cJSON_GetObjectItemCaseSensitive(body, "model");
  if (model && !cJSON_IsNull(model)) {
    if (!cJSON_IsString(model))
      return EMB_BAD("model", "'model' must be a string, got %s",
                     llorch_json_describe(model, desc, sizeof desc));
    out->model = model->valuestring;
  }
  const cJSON *in = cJSON_GetObjectItemCaseSensitive(body, "input");
  int rc = embed_check_input(in, out, err);
  if (rc < 0) return rc;
  out->input = in;
  const cJSON *enc = cJSON_GetObjectItemCaseSensitive(body, "encoding_format");
  if (enc && !cJSON_IsNull(enc)) {
    if (cJSON_IsString(enc) && strcmp(enc->valuestring, "float") == 0) out->encoding = LLORCH_EMBED_FLOAT;
    else if (cJSON_IsString(enc) && strcmp(enc->valuestring, "base64") == 0)
      out->encoding = LLORCH_EMBED_BASE64;
    else
      return EMB_BAD("encoding_format", "'encoding_format' must be \"float\" or \"base64\", got %s",
                     llorch_json_describe(enc, desc, sizeof desc));
  }
  const cJSON *dims = cJSON_GetObjectItemCaseSensitive(body, "dimensions");
  if (dims && !cJSON_IsNull(dims)) {
    if (!cJSON_IsNumber(dims) || dims->valuedouble != floor(dims->valuedouble) ||
        dims->valuedouble < 1 || dims->valuedouble > LLORCH_OPENAI_MAX_EMBED_DIMENSIONS)
      return EMB_BAD("dimensions", "'dimensions' must be an integer from 1 to the model's embedding "
                                   "size, got %s", llorch_json_describe(dims, desc, sizeof desc));
    out->dimensions = (uint32_t)dims->valuedouble;
  }
  const cJSON *user = cJSON_GetObjectItemCaseSensitive(body, "user");
  if (user && !cJSON_IsNull(user) && !cJSON_IsString(user))
    return EMB_BAD("user", "'user' must be a string, got %s",
                   llorch_json_describe(user, desc, sizeof desc));
  return 0;
}

void llorch_openai_embed_input(const llorch_openai_embed_request *r, int i, const char **text,
                               const cJSON **ids) {
  *text = NULL;
  *ids = NULL;
  const cJSON *in = r->input;
  if (cJSON_IsString(in)) {
    *text = in->valuestring;
    return;
  }
  if (r->ids && cJSON_IsNumber(in->child)) { /* one list of ids */
    *ids = in;
    return;
  }
  const cJSON *e = cJSON_GetArrayItem(in, i);
  if (r->ids) *ids = e;
  else *text = e ? e->valuestring : NULL;
}

char *llorch_openai_embed_body(const llorch_openai_embed_request *r) {
  cJSON *o = cJSON_CreateObject();
  if (!o) return NULL;
  cJSON *in = cJSON_Duplicate(r->input, true);
  char *text = NULL;
  if (!in || !cJSON_AddItemToObject(o, "input", in)) {
    cJSON_Delete(in);
    goto out;
  }
  if (!cJSON_AddStringToObject(o, "encoding_format",
                               r->encoding == LLORCH_EMBED_BASE64 ? "base64" : "float"))
    goto out;
  if (r->dimensions && !cJSON_AddNumberToObject(o, "dimensions", r->dimensions)) goto out;
  text = llorch_json_print(o);
out:
  cJSON_Delete(o);
  return text;
}

/* ---- vectors ---- */

uint32_t llorch_openai_embed_finish_vector(float *v, uint32_t n, uint32_t dims, bool normalize) {
  if (dims && dims < n) n = dims;
  if (!normalize) return n;
  double ss = 0.0;
  for (uint32_t i = 0; i < n; i++) ss += (double)v[i] * v[i];
  if (ss > 0.0) {
    const float inv = (float)(1.0 / sqrt(ss));
    for (uint32_t i = 0; i < n; i++) v[i] *= inv;
  }
  return n;
}

/* ---- the answer ---- */

/* A float32 in its shortest text that reads back as the same float32 (a
 * double's shortest form would print float noise: 0.1f as 0.10000000149),
 * as one array item. */
static void embed_write_float(llorch_jbuf *b, float v) {
  if (!isfinite(v)) {
    llorch_jbuf_null(b);
    return;
  }
  char tmp[32];
  int n = 0;
  for (int prec = 6; prec <= 9; prec++) {
    n = snprintf(tmp, sizeof tmp, "%.*g", prec, (double)v);
    if (strtof(tmp, NULL) == v) break;
  }
  llorch_jbuf_value(b, tmp, (size_t)n);
}

/* base64 (RFC 4648, padded) of v's little-endian float32 bytes, as a string
 * value. */
static void embed_write_base64(llorch_jbuf *b, const float *v, uint32_t n) {
  static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const size_t nb = (size_t)n * 4;
  char *out = malloc((nb + 2) / 3 * 4 + 1);
  if (!out) {
    b->err = LLORCH_ENOMEM; /* the answer is refused as a whole */
    return;
  }
  size_t o = 0;
  uint8_t in[3];
  for (size_t i = 0; i < nb; i += 3) {
    size_t k = 0;
    for (; k < 3 && i + k < nb; k++) {
      const size_t byte = i + k;
      uint32_t bits;
      memcpy(&bits, &v[byte / 4], 4);
      in[k] = (uint8_t)(bits >> (8 * (byte % 4))); /* little-endian whatever the host */
    }
    for (size_t q = k; q < 3; q++) in[q] = 0;
    out[o++] = tab[in[0] >> 2];
    out[o++] = tab[((in[0] & 3) << 4) | (in[1] >> 4)];
    out[o++] = k > 1 ? tab[((in[1] & 15) << 2) | (in[2] >> 6)] : '=';
    out[o++] = k > 2 ? tab[in[2] & 63] : '=';
  }
  llorch_jbuf_strn(b, out, o);
  free(out);
}

void llorch_openai_write_embeddings(llorch_jbuf *b, const char *model, const float *const *vecs,
                                    int n, uint32_t dim, llorch_openai_embed_encoding enc,
                                    uint32_t prompt_tokens) {
  /* data last: llorch_openai_embeddings_rename rewrites the head only */
  llorch_jbuf_obj(b);
  llorch_jbuf_kstr(b, "object", "list");
  llorch_jbuf_kstr(b, "model", model);
  llorch_jbuf_kobj(b, "usage");
  llorch_jbuf_kint(b, "prompt_tokens", prompt_tokens);
  llorch_jbuf_kint(b, "total_tokens", prompt_tokens);
  llorch_jbuf_end(b);
  llorch_jbuf_karr(b, "data");
  for (int i = 0; i < n; i++) {
    llorch_jbuf_obj(b);
    llorch_jbuf_kstr(b, "object", "embedding");
    llorch_jbuf_kint(b, "index", i);
    llorch_jbuf_key(b, "embedding");
    if (enc == LLORCH_EMBED_BASE64) {
      embed_write_base64(b, vecs[i], dim);
    } else {
      llorch_jbuf_arr(b);
      for (uint32_t d = 0; d < dim; d++) embed_write_float(b, vecs[i][d]);
      llorch_jbuf_end(b);
    }
    llorch_jbuf_end(b);
  }
  llorch_jbuf_end(b);
  llorch_jbuf_end(b);
}

/* Skips the literal lit at *p; false when the text differs. */
static bool embed_skip(const char **p, const char *end, const char *lit) {
  size_t n = strlen(lit);
  if ((size_t)(end - *p) < n || memcmp(*p, lit, n) != 0) return false;
  *p += n;
  return true;
}

/* Reads decimal digits at *p (at most 10) into *v. */
static bool embed_skip_uint(const char **p, const char *end, uint32_t *v) {
  uint64_t x = 0;
  const char *s = *p;
  while (*p < end && **p >= '0' && **p <= '9' && *p - s < 10) x = x * 10 + (uint64_t)(*(*p)++ - '0');
  if (*p == s || x > UINT32_MAX) return false;
  *v = (uint32_t)x;
  return true;
}

int llorch_openai_embeddings_rename(const char *body, size_t len, const char *model,
                                    llorch_jbuf *out, uint32_t *prompt_tokens) {
  const char *p = body, *end = body + len;
  if (!embed_skip(&p, end, "{\"object\":\"list\",\"model\":\"")) return LLORCH_EFORMAT;
  while (p < end && *p != '"') p += *p == '\\' ? 2 : 1; /* the old name, escapes and all */
  if (p >= end) return LLORCH_EFORMAT;
  p++;
  const char *rest = p; /* from ,"usage" on: kept as it is */
  uint32_t pt = 0, tt = 0;
  if (!embed_skip(&p, end, ",\"usage\":{\"prompt_tokens\":") || !embed_skip_uint(&p, end, &pt) ||
      !embed_skip(&p, end, ",\"total_tokens\":") || !embed_skip_uint(&p, end, &tt) ||
      !embed_skip(&p, end, "},\"data\":[") || len < 2 || body[len - 1] != '}' || body[len - 2] != ']')
    return LLORCH_EFORMAT;
  /* the head again with the new name, then the rest as it is */
  llorch_jbuf_cstr(out, "{\"object\":\"list\",\"model\":");
  llorch_jbuf_str(out, model);
  llorch_jbuf_raw(out, rest, (size_t)(end - rest));
  *prompt_tokens = pt;
  return llorch_jbuf_error(out);
}
