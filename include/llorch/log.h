/*
 * Leveled logging.
 *
 * One line per event. On a terminal the line is human-readable
 * ("2026-11-22T19:30:01.123Z INFO  worker  [req-id] message"); otherwise it is
 * a JSON object per line ({"ts":..., "level":..., "component":...,
 * "request_id":..., "msg":...}) so log shippers need no parsing rules. The
 * request id, when there is one, goes into every line about that request.
 */
#ifndef LLORCH_LOG_H
#define LLORCH_LOG_H

#include <stdio.h>

typedef enum llorch_log_level {
  LLORCH_LOG_DEBUG = 0,
  LLORCH_LOG_INFO = 1,
  LLORCH_LOG_WARN = 2,
  LLORCH_LOG_ERROR = 3,
} llorch_log_level;

typedef enum llorch_log_format {
  LLORCH_LOG_FORMAT_AUTO = 0, /* text on a terminal, JSON otherwise */
  LLORCH_LOG_FORMAT_TEXT = 1,
  LLORCH_LOG_FORMAT_JSON = 2,
} llorch_log_format;

/* Defaults before this is called: INFO, AUTO, stderr. */
void llorch_log_init(llorch_log_level min_level, llorch_log_format format,
                     FILE *out);

/* Parses "debug" / "info" / "warn" / "error"; returns 0 or LLORCH_EINVAL. */
int llorch_log_level_parse(const char *s, llorch_log_level *out);
/* Parses "auto" / "text" / "json"; returns 0 or LLORCH_EINVAL. */
int llorch_log_format_parse(const char *s, llorch_log_format *out);

/* request_id may be NULL. component is a short word: "http", "worker", ... */
void llorch_log_write(llorch_log_level level, const char *component,
                      const char *request_id, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

int llorch_log_enabled(llorch_log_level level);

#define LLORCH_LOG(level, comp, rid, ...)                                     \
  do {                                                                        \
    if (llorch_log_enabled(level)) llorch_log_write(level, comp, rid, __VA_ARGS__); \
  } while (0)
#define LOG_DEBUG(comp, rid, ...) LLORCH_LOG(LLORCH_LOG_DEBUG, comp, rid, __VA_ARGS__)
#define LOG_INFO(comp, rid, ...) LLORCH_LOG(LLORCH_LOG_INFO, comp, rid, __VA_ARGS__)
#define LOG_WARN(comp, rid, ...) LLORCH_LOG(LLORCH_LOG_WARN, comp, rid, __VA_ARGS__)
#define LOG_ERROR(comp, rid, ...) LLORCH_LOG(LLORCH_LOG_ERROR, comp, rid, __VA_ARGS__)

#endif /* LLORCH_LOG_H */
