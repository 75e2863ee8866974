/*
 * Server-Sent Events framing (text/event-stream), both directions.
 *
 * Writing: llorch_sse_format turns one event into its wire text. The server
 * side of a stream lives in http.h (llorch_http_sse_*), built on this.
 *
 * Reading: an incremental parser that takes a response body in pieces of any
 * size and calls back once per complete event, per the WHATWG rules: fields
 * "event", "data" (several data lines are joined with "\n"), "id", "retry";
 * lines starting with ':' are comments and ignored; lines end with \n, \r\n
 * or \r; an event is dispatched on a blank line, and only if it had data.
 */
#ifndef LLORCH_SSE_H
#define LLORCH_SSE_H

#include <stddef.h>

#include "llorch/error.h"

/*
 * Formats one event: "event: <event>\n" when event is not NULL, one
 * "data: <line>\n" per line of data (split on \n, \r\n or \r, so the receiver
 * gets the same text back), then "\n". Returns a malloc'd string (length in
 * *out_len) or NULL when out of memory.
 */
char *llorch_sse_format(const char *event, const char *data, size_t len, size_t *out_len);

/* One parsed event. Strings are NUL-terminated and valid during the callback only. */
typedef struct llorch_sse_event {
  const char *event;  /* "message" when the stream gave no event name */
  const char *data;   /* data lines joined with "\n" */
  size_t data_len;    /* bytes */
  const char *id;     /* last id seen on the stream, "" if none */
} llorch_sse_event;

/* Return 0 to go on; anything else stops llorch_sse_parser_feed, which returns it. */
typedef int (*llorch_sse_event_fn)(const llorch_sse_event *ev, void *user);

typedef struct llorch_sse_parser llorch_sse_parser;

/*
 * Creates a parser calling cb(ev, user) per event. max_event_bytes bounds one
 * event (line + data) so a hostile peer cannot make it grow without end;
 * 0 = 16 MiB. Returns 0 or LLORCH_ENOMEM.
 */
int llorch_sse_parser_init(llorch_sse_parser **out, size_t max_event_bytes,
                           llorch_sse_event_fn cb, void *user);

/*
 * Feeds bytes. Returns 0, the callback's non-zero value, LLORCH_ELIMIT (an
 * event over max_event_bytes; the parser is then unusable) or LLORCH_ENOMEM.
 */
int llorch_sse_parser_feed(llorch_sse_parser *p, const char *data, size_t len);

/* The "retry" field last seen, in ms; -1 if none. */
long llorch_sse_parser_retry(const llorch_sse_parser *p);

void llorch_sse_parser_free(llorch_sse_parser *p);

#endif /* LLORCH_SSE_H */
