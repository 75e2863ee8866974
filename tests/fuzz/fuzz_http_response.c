/*
 * libFuzzer target for the HTTP client's response parser (what a worker or
 * pool sends back to the orchestrator): status line, headers, Content-Length,
 * chunked and close-delimited bodies, and the SSE event parser on top. The
 * first byte picks the mode (SSE or not, HEAD or not). No crash, leak or
 * out-of-bounds access whatever the bytes.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "net/http_client-impl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void on_event(const llorch_sse_event *ev, void *user) {
  if (ev->event == NULL || ev->data == NULL || ev->id == NULL) abort();
  if (strlen(ev->data) > ev->data_len) abort();
  (*(int *)user)++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  bool sse = data[0] & 1, head = data[0] & 2;
  int events = 0;
  int rc = llorch_http_client_parse_response(data + 1, size - 1, sse, head, on_event, &events);
  if (rc > 999) abort();
  return 0;
}
