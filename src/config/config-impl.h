/*
 * Internals of the config module: the option table and the value codecs
 * shared by the YAML reader, the flag parser, the dump and --help.
 */
#ifndef LLORCH_CONFIG_IMPL_H
#define LLORCH_CONFIG_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llorch/config.h"

typedef enum config_type {
  CONFIG_TYPE_STRING,   /* char *; NULL = unset */
  CONFIG_TYPE_INT,      /* int */
  CONFIG_TYPE_UINT64,   /* uint64_t */
  CONFIG_TYPE_DOUBLE,   /* double */
  CONFIG_TYPE_BOOL,     /* bool */
  CONFIG_TYPE_DURATION, /* int64_t milliseconds */
  CONFIG_TYPE_BYTES,    /* uint64_t bytes */
  CONFIG_TYPE_ENUM,     /* an enum stored as int: index into enum_names */
  CONFIG_TYPE_STRLIST,  /* llorch_strlist */
  CONFIG_TYPE_MODELS,   /* llorch_model_list; fields from config_model_fields[] */
} config_type;

enum {
  CONFIG_OPT_SECRET = 1u << 0,   /* redacted in dumps */
  CONFIG_OPT_NEVER = 1u << 1,    /* duration: -1 means never */
  CONFIG_OPT_REQUIRED = 1u << 2, /* model entry field that must be present */
};

/* Index of a role in config_option.def_role[]. */
enum { CONFIG_ROLE_IX_ORCHESTRATOR, CONFIG_ROLE_IX_POOL, CONFIG_ROLE_IX_WORKER,
       CONFIG_ROLE_IX_ALL, CONFIG_ROLE_IX_COUNT };

#define CONFIG_ROLES_ANY                                                      \
  (LLORCH_ROLE_ORCHESTRATOR | LLORCH_ROLE_POOL | LLORCH_ROLE_WORKER | LLORCH_ROLE_ALL)

typedef struct config_option {
  const char *name;          /* dotted YAML path: "worker.slots" */
  const char *flag;          /* command-line flag without "--", or NULL */
  config_type type;
  unsigned roles;            /* llorch_role bits it applies to */
  size_t offset;             /* of the field in llorch_config (or llorch_model_entry) */
  const char *def;           /* default, written as in a file; NULL = unset/zero/empty */
  const char *def_role[CONFIG_ROLE_IX_COUNT]; /* per-role default overriding def */
  int64_t min, max;          /* INT, UINT64, BYTES: value range; DURATION: ms */
  double dmin, dmax;         /* DOUBLE range */
  const char *const *enum_names; /* ENUM: NULL-terminated, index = stored value */
  /* STRING and STRLIST items: extra syntax check; returns 0 when s is good. */
  int (*check)(const char *s);
  const char *expect;        /* what check wants, for error lines: "HOST:PORT" */
  const char *meta;          /* --help value name: "N", "HOST:PORT" */
  unsigned flags;            /* CONFIG_OPT_* */
  const char *help;
} config_option;

extern const config_option config_options[];
extern const size_t config_options_count;
/* The fields of one orchestrator.models entry; offsets into llorch_model_entry. */
extern const config_option config_model_fields[];
extern const size_t config_model_fields_count;

/* ---- value codecs (value.c) ---- */

/*
 * Parses the scalar text (is_null: YAML null or an empty flag value) into the
 * field at base + o->offset, replacing what was there. STRLIST: text is one
 * comma-separated list, appended when append is set. Returns 0, LLORCH_EFORMAT
 * (wrong type) or LLORCH_ERANGE (out of range / failed check); LLORCH_ENOMEM.
 */
int config_value_parse(const config_option *o, void *base, const char *text, bool is_null,
                       bool append);
/* Appends one list item (checked) to the STRLIST at base + o->offset. */
int config_list_append(const config_option *o, void *base, const char *item);
/* "an integer in 1..256", "one of debug|info|warn|error", ... */
void config_value_expected(const config_option *o, char *buf, size_t n);
/* Writes the current value of a scalar or STRLIST option as YAML text. */
void config_value_format(const config_option *o, const void *base, char *buf, size_t n);
/* Frees the heap parts of the field (strings, lists, model entries) and zeroes it. */
void config_value_free(const config_option *o, void *base);
/* Sets the field to the option's default for role. */
int config_value_default(const config_option *o, void *base, llorch_role role);

void config_strlist_free(llorch_strlist *l);
void config_model_entry_free(llorch_model_entry *e);

/* Writes s as a YAML double-quoted scalar into buf (truncating safely). */
void config_quote(const char *s, char *buf, size_t n);

#endif /* LLORCH_CONFIG_IMPL_H */
