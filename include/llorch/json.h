/*
 * JSON helpers over cJSON.
 *
 * The getters check one field of a request object and, when it is wrong,
 * return LLORCH_EINVAL with em holding the sentence a client sees in its 400:
 *   'max_tokens' must be an integer >= 1, got "abc"
 *   'messages[2].role' must be one of system, user, assistant, got "robot"
 *   'model' is required
 * `where` is the path of the object holding the field ("" or NULL at top
 * level, "messages[2]" inside an array element); the name in the message is
 * where + "." + key. An optional field that is absent or JSON null leaves *out
 * untouched (set the default first) and returns 0. The field name that was
 * wrong can be read back with llorch_json_errparam (the "param" of an OpenAI
 * error envelope).
 *
 * The builder (llorch_jbuf) writes JSON text directly, for hot paths such as
 * one SSE chunk per token where building a cJSON tree would be wasteful.
 */
#ifndef LLORCH_JSON_H
#define LLORCH_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "llorch/error.h"

/* ---- parsing ---- */

/*
 * Parses text[0..len) (need not be NUL-terminated). Returns 0 with *out (free
 * with cJSON_Delete), or LLORCH_EINVAL with em: "request body is not valid
 * JSON (error near byte N)" or "request body is empty". When require_object
 * is true, anything but an object is refused: "request body must be a JSON
 * object, got an array". Strings that cJSON would silently change are
 * refused too, naming the field (llorch_json_errparam gives it): a NUL
 * (escaped or raw), invalid UTF-8, a lone UTF-16 surrogate escape. Clears
 * llorch_json_errparam first.
 */
int llorch_json_parse(const char *text, size_t len, bool require_object, cJSON **out,
                      llorch_errmsg *em);

/* ---- field getters (see the top of this file) ---- */

/* A string. *out points into obj. */
int llorch_json_get_string(const cJSON *obj, const char *where, const char *key,
                           bool required, const char **out, llorch_errmsg *em);

/* An integer (a JSON number with no fraction) in [min, max]. */
int llorch_json_get_int(const cJSON *obj, const char *where, const char *key,
                        bool required, int64_t min, int64_t max, int64_t *out,
                        llorch_errmsg *em);

/* A finite number in [min, max]. */
int llorch_json_get_number(const cJSON *obj, const char *where, const char *key,
                           bool required, double min, double max, double *out,
                           llorch_errmsg *em);

/* true or false. */
int llorch_json_get_bool(const cJSON *obj, const char *where, const char *key,
                         bool required, bool *out, llorch_errmsg *em);

/* An array; when min_items > 0 an empty array is refused ("must have at least 1 item"). */
int llorch_json_get_array(const cJSON *obj, const char *where, const char *key,
                          bool required, size_t min_items, const cJSON **out,
                          llorch_errmsg *em);

/* An object. */
int llorch_json_get_object(const cJSON *obj, const char *where, const char *key,
                           bool required, const cJSON **out, llorch_errmsg *em);

/*
 * A string from a fixed set (allowed is NULL-terminated); *index gets its
 * position in allowed.
 */
int llorch_json_get_enum(const cJSON *obj, const char *where, const char *key,
                         bool required, const char *const *allowed, int *index,
                         llorch_errmsg *em);

/*
 * Counts the JSON values (objects, arrays, strings, numbers, literals) in
 * text[0..len) in one pass without building anything; stops counting past
 * max. A body's cJSON tree costs about 64 bytes and one allocation per value
 * whatever the value's size, so 8 MiB of "0," is four million nodes: the
 * count is checked before parsing. Malformed text gives some count; the
 * parser refuses it later.
 */
size_t llorch_json_count_values(const char *text, size_t len, size_t max);

/*
 * llorch_json_parse(require_object = true) for bodies from outside, refused
 * first with LLORCH_ELIMIT ("request body has more than N JSON values (NAME)")
 * when it holds more than max_values values; limit_name names the setting.
 */
int llorch_json_parse_bounded(const char *text, size_t len, size_t max_values,
                              const char *limit_name, cJSON **out, llorch_errmsg *em);

/*
 * The field path of the last getter (or llorch_json_parse) failure on this
 * thread since llorch_json_parse last started ("messages[2].role"), "" if
 * none. Valid until the next failure.
 */
const char *llorch_json_errparam(void);

/* Sets the field path llorch_json_errparam returns (for checks made without a getter); NULL clears it. */
void llorch_json_set_errparam(const char *param);

/* Writes "<where>[<i>]" into buf, for the where of array elements. */
const char *llorch_json_path_index(char *buf, size_t size, const char *where,
                                   const char *key, size_t i);

/*
 * Describes a value for messages: "abc" in quotes (cut at 40 characters),
 * numbers as written, "null", "true", "an array", "an object". Writes into buf.
 */
const char *llorch_json_describe(const cJSON *v, char *buf, size_t size);

/* cJSON_PrintUnformatted; returns a malloc'd string or NULL. */
char *llorch_json_print(const cJSON *v);

/* ---- builder ---- */

typedef struct llorch_jbuf {
  char *data;  /* NUL-terminated text; NULL until something is appended */
  size_t len;  /* bytes, without the NUL */
  size_t cap;  /* bytes allocated */
  int err;     /* LLORCH_ENOMEM once an append failed, LLORCH_EINVAL on unbalanced
                * _obj/_arr/_end or nesting past LLORCH_JBUF_MAX_DEPTH (later appends do nothing) */
  /* Structured writing (below): containers opened with _obj/_arr. */
  int depth;          /* 0: plain appends, no automatic commas */
  uint64_t nonempty;  /* bit d: the container at depth d holds an item already */
  uint64_t is_array;  /* bit d: the container at depth d is an array */
  bool after_key;     /* the next value completes a "key": pair (no comma before it) */
} llorch_jbuf;

#define LLORCH_JBUF_MAX_DEPTH 63

void llorch_jbuf_init(llorch_jbuf *b);
void llorch_jbuf_free(llorch_jbuf *b);
/* Empties b, keeping its memory. */
void llorch_jbuf_reset(llorch_jbuf *b);

/*
 * Two ways to write. Plain: the caller writes punctuation itself with _raw/_cstr
 * between values (the hot per-token paths do this). Structured: open a
 * container with _obj/_arr, write keys and values, close it with _end; commas
 * between items come by themselves:
 *
 *   llorch_jbuf_obj(b);
 *   llorch_jbuf_kstr(b, "name", p->name);
 *   llorch_jbuf_karr(b, "devices");
 *   for (...) llorch_jbuf_str(b, dev[i]);
 *   llorch_jbuf_end(b);   -- the array
 *   llorch_jbuf_end(b);   -- the object
 *
 * Inside a structured container every value must come from a value call
 * (_str, _int, _num, _bool, _null, _value, _obj, _arr), not _raw/_cstr.
 */

/* Appends raw text (punctuation, pre-built JSON), never a comma. */
void llorch_jbuf_raw(llorch_jbuf *b, const char *s, size_t n);
void llorch_jbuf_cstr(llorch_jbuf *b, const char *s);
/* Values. A quoted, escaped JSON string (invalid UTF-8 becomes U+FFFD); NULL -> null. */
void llorch_jbuf_str(llorch_jbuf *b, const char *s);
void llorch_jbuf_strn(llorch_jbuf *b, const char *s, size_t n);
void llorch_jbuf_int(llorch_jbuf *b, int64_t v);
/* A finite double (shortest round-trip form); NaN/inf become null. */
void llorch_jbuf_num(llorch_jbuf *b, double v);
void llorch_jbuf_bool(llorch_jbuf *b, bool v);
void llorch_jbuf_null(llorch_jbuf *b);
/* A pre-built JSON value (n bytes of valid JSON text) as one item. */
void llorch_jbuf_value(llorch_jbuf *b, const char *json, size_t n);
/* Opens an object / an array as a value; _end closes the innermost one. */
void llorch_jbuf_obj(llorch_jbuf *b);
void llorch_jbuf_arr(llorch_jbuf *b);
void llorch_jbuf_end(llorch_jbuf *b);
/* Appends a "key": prefix (escaped key and a colon; a comma first when the
 * structured object holding it has an item already). */
void llorch_jbuf_key(llorch_jbuf *b, const char *key);
/* A key and its value in one call. */
void llorch_jbuf_kstr(llorch_jbuf *b, const char *key, const char *s);
void llorch_jbuf_kint(llorch_jbuf *b, const char *key, int64_t v);
void llorch_jbuf_knum(llorch_jbuf *b, const char *key, double v);
void llorch_jbuf_kbool(llorch_jbuf *b, const char *key, bool v);
void llorch_jbuf_kobj(llorch_jbuf *b, const char *key);
void llorch_jbuf_karr(llorch_jbuf *b, const char *key);
/* 0 or LLORCH_ENOMEM. */
int llorch_jbuf_error(const llorch_jbuf *b);

/*
 * Builds {"error":{"message":...,"type":...,"param":...,"code":...}} (param
 * and code NULL -> null) as a malloc'd string, or NULL when out of memory.
 */
char *llorch_json_error_envelope(const char *message, const char *type,
                                 const char *param, const char *code);
/*
 * Anthropic's error body {"type":"error","error":{"type":..,"message":..}},
 * the type from the HTTP status (400 invalid_request_error, 401
 * authentication_error, 403 permission_error, 404 not_found_error, 413
 * request_too_large, 429 rate_limit_error, 503 overloaded_error, else
 * api_error). malloc'd, NULL when out of memory.
 */
char *llorch_json_error_envelope_anthropic(const char *message, int status);
/* The Anthropic error type of an HTTP status (as above). */
const char *llorch_json_anthropic_error_type(int status);

#endif /* LLORCH_JSON_H */
