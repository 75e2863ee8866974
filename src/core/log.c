/*
 * Leveled logging: text on a terminal, JSON lines otherwise.
 * One fprintf per line under a mutex, so lines from the engine's threads and
 * the loop thread never interleave.
 */
#include "llorch/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "llorch/error.h"

static struct {
  llorch_log_level min_level;
  llorch_log_format format;
  FILE *out;
  pthread_mutex_t lock;
} g_log = {LLORCH_LOG_INFO, LLORCH_LOG_FORMAT_AUTO, NULL, PTHREAD_MUTEX_INITIALIZER};

static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
static const char *const level_words[] = {"debug", "info", "warn", "error"};

void llorch_log_init(llorch_log_level min_level, llorch_log_format format, FILE *out) {
  pthread_mutex_lock(&g_log.lock);
  g_log.min_level = min_level;
  g_log.format = format;
  g_log.out = out;
  pthread_mutex_unlock(&g_log.lock);
}

int llorch_log_level_parse(const char *s, llorch_log_level *out) {
  for (int i = 0; i < 4; i++) {
    if (strcasecmp(s, level_words[i]) == 0) {
      *out = (llorch_log_level)i;
      return 0;
    }
  }
  return LLORCH_EINVAL;
}

int llorch_log_format_parse(const char *s, llorch_log_format *out) {
  static const char *const names[] = {"auto", "text", "json"};
  for (int i = 0; i < 3; i++) {
    if (strcasecmp(s, names[i]) == 0) {
      *out = (llorch_log_format)i;
      return 0;
    }
  }
  return LLORCH_EINVAL;
}

int llorch_log_enabled(llorch_log_level level) { return level >= g_log.min_level; }

/* Writes s as the inside of a JSON string. */
static void json_escape(FILE *f, const char *s) {
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    switch (*p) {
      case '"': fputs("\\\"", f); break;
      case '\\': fputs("\\\\", f); break;
      case '\n': fputs("\\n", f); break;
      case '\r': fputs("\\r", f); break;
      case '\t': fputs("\\t", f); break;
      default:
        if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
  }
}

/*
 * Writes s with control characters escaped (\n, \r, \t, \xNN): one call is
 * one line, whatever a peer put into the values interpolated into it (a
 * model name with a newline must not forge a second log line).
 */
static void text_escape(FILE *f, const char *s) {
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    switch (*p) {
      case '\n': fputs("\\n", f); break;
      case '\r': fputs("\\r", f); break;
      case '\t': fputs("\\t", f); break;
      default:
        if (*p < 0x20 || *p == 0x7f) fprintf(f, "\\x%02x", *p);
        else fputc(*p, f);
    }
  }
}

void llorch_log_write(llorch_log_level level, const char *component, const char *request_id,
                      const char *fmt, ...) {
  if (level < g_log.min_level) return;
  if (level < LLORCH_LOG_DEBUG || level > LLORCH_LOG_ERROR) level = LLORCH_LOG_ERROR;

  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);

  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  char ts[40];
  size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(ts + n, sizeof ts - n, ".%03dZ", (int)(tv.tv_usec / 1000));

  pthread_mutex_lock(&g_log.lock);
  FILE *f = g_log.out ? g_log.out : stderr;
  llorch_log_format fmt_kind = g_log.format;
  if (fmt_kind == LLORCH_LOG_FORMAT_AUTO)
    fmt_kind = isatty(fileno(f)) ? LLORCH_LOG_FORMAT_TEXT : LLORCH_LOG_FORMAT_JSON;
  if (fmt_kind == LLORCH_LOG_FORMAT_TEXT) {
    fprintf(f, "%s %-5s ", ts, level_names[level]);
    char comp[64];
    snprintf(comp, sizeof comp, "%-12s ", component ? component : "-");
    text_escape(f, comp);
    if (request_id) {
      fputc('[', f);
      text_escape(f, request_id);
      fputs("] ", f);
    }
    text_escape(f, msg);
    fputc('\n', f);
  } else {
    fprintf(f, "{\"ts\":\"%s\",\"level\":\"%s\",\"component\":\"", ts, level_words[level]);
    json_escape(f, component ? component : "");
    fputc('"', f);
    if (request_id) {
      fputs(",\"request_id\":\"", f);
      json_escape(f, request_id);
      fputc('"', f);
    }
    fputs(",\"msg\":\"", f);
    json_escape(f, msg);
    fputs("\"}\n", f);
  }
  fflush(f);
  pthread_mutex_unlock(&g_log.lock);
}
