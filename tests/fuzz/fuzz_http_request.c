/*
 * libFuzzer target for the HTTP request parser and the JSON body path:
 * arbitrary bytes run through llorch_http_parse_buffer (the server's own
 * parser, limits and request objects, without sockets) with small limits so
 * that 413/431 paths are reached; every complete request's query, headers
 * and body go through the same helpers a handler uses (query params, bearer
 * auth, JSON parse and field getters). The same bytes also go through the
 * SSE parser the client uses. Whatever the input: no crash, leak, or
 * out-of-bounds access, and every JSON error explains itself in one line.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/auth.h"
#include "llorch/http.h"
#include "llorch/json.h"
#include "llorch/sse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_errmsg(const llorch_errmsg *em) {
  if (em->text[0] == '\0' || strchr(em->text, '\n') != NULL) abort();
}

static void on_request(llorch_http_request *req, void *user) {
  static const char *const roles[] = {"system", "user", "assistant", NULL};
  static const char *const tokens[] = {"secret-token"};
  char buf[128];
  llorch_http_request_query_param(req, "model", buf, sizeof buf);
  llorch_http_request_query_param(req, "q", buf, 4);
  llorch_auth_check(llorch_http_request_header(req, "Authorization"), tokens, 1);
  for (size_t i = 0; i < llorch_http_request_header_count(req); i++) {
    const char *name, *value;
    llorch_http_request_header_at(req, i, &name, &value);
    if (name == NULL || value == NULL) abort();
  }
  size_t len;
  const char *body = llorch_http_request_body(req, &len);
  llorch_errmsg em = {{0}};
  cJSON *doc = NULL;
  if (llorch_json_parse(body, len, true, &doc, &em) < 0) {
    check_errmsg(&em);
    return;
  }
  const char *model = NULL;
  int64_t max_tokens = 16;
  double temperature = 1.0;
  bool stream = false;
  const cJSON *msgs = NULL;
  if (llorch_json_get_string(doc, NULL, "model", true, &model, &em) < 0) check_errmsg(&em);
  if (llorch_json_get_int(doc, NULL, "max_tokens", false, 1, 1 << 20, &max_tokens, &em) < 0)
    check_errmsg(&em);
  if (llorch_json_get_number(doc, NULL, "temperature", false, 0, 2, &temperature, &em) < 0)
    check_errmsg(&em);
  if (llorch_json_get_bool(doc, NULL, "stream", false, &stream, &em) < 0) check_errmsg(&em);
  if (llorch_json_get_array(doc, NULL, "messages", false, 1, &msgs, &em) < 0) {
    check_errmsg(&em);
  } else if (msgs != NULL) {
    int n = cJSON_GetArraySize(msgs);
    for (int i = 0; i < n && i < 64; i++) {
      char where[64];
      int role;
      const char *content;
      const cJSON *m = cJSON_GetArrayItem(msgs, i);
      llorch_json_path_index(where, sizeof where, NULL, "messages", (size_t)i);
      if (llorch_json_get_enum(m, where, "role", true, roles, &role, &em) < 0) check_errmsg(&em);
      if (llorch_json_get_string(m, where, "content", false, &content, &em) < 0)
        check_errmsg(&em);
    }
  }
  /* Building a response from what was read must stay valid JSON. */
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_cstr(&b, "{");
  llorch_jbuf_key(&b, "model");
  llorch_jbuf_str(&b, model);
  llorch_jbuf_cstr(&b, "}");
  if (b.err == 0) {
    cJSON *back = cJSON_Parse(b.data);
    if (back == NULL) abort();
    cJSON_Delete(back);
  }
  llorch_jbuf_free(&b);
  cJSON_Delete(doc);
}

static int on_event(const llorch_sse_event *ev, void *user) {
  if (ev->data == NULL || strlen(ev->data) > ev->data_len) abort();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  llorch_http_config cfg;
  llorch_http_config_default(&cfg);
  cfg.max_header_bytes = 2048;
  cfg.max_header_count = 16;
  cfg.max_body_bytes = 4096;
  int rc = llorch_http_parse_buffer(&cfg, data, size, on_request, NULL);
  if (rc < 0 && rc != -400 && rc != -413 && rc != -431 && rc != -505 && rc != -500) abort();

  llorch_sse_parser *p;
  if (llorch_sse_parser_init(&p, 1024, on_event, NULL) == 0) {
    size_t half = size / 2;
    llorch_sse_parser_feed(p, (const char *)data, half);
    llorch_sse_parser_feed(p, (const char *)data + half, size - half);
    llorch_sse_parser_free(p);
  }
  return 0;
}
