/*
 * Loading the configuration: defaults, then a YAML file (libyaml's document
 * API, so every node keeps its line and column for error lines), then the
 * command-line flags, then the checks across options.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <yaml.h>

#include "config-impl.h"
#include "llorch/file.h"

/* ---- roles ---- */

static const struct {
  const char *name;
  llorch_role role;
} role_names[] = {
    {"orchestrator", LLORCH_ROLE_ORCHESTRATOR},
    {"pool", LLORCH_ROLE_POOL},
    {"worker", LLORCH_ROLE_WORKER},
    {"all", LLORCH_ROLE_ALL},
};

int llorch_role_parse(const char *s, llorch_role *out) {
  for (size_t i = 0; i < sizeof role_names / sizeof role_names[0]; i++) {
    if (strcmp(s, role_names[i].name) == 0) {
      *out = role_names[i].role;
      return 0;
    }
  }
  return LLORCH_EINVAL;
}

const char *llorch_role_name(llorch_role role) {
  for (size_t i = 0; i < sizeof role_names / sizeof role_names[0]; i++)
    if (role_names[i].role == role) return role_names[i].name;
  return "none";
}

/* ---- init / free ---- */

int llorch_config_init(llorch_config *cfg, llorch_role role) {
  memset(cfg, 0, sizeof *cfg);
  cfg->role = role;
  for (size_t i = 0; i < config_options_count; i++) {
    int err = config_value_default(&config_options[i], cfg, role);
    if (err) {
      llorch_config_free(cfg);
      return err;
    }
  }
  return 0;
}

void llorch_config_free(llorch_config *cfg) {
  for (size_t i = 0; i < config_options_count; i++) config_value_free(&config_options[i], cfg);
  free(cfg->path);
  memset(cfg, 0, sizeof *cfg);
}

/* ---- YAML ---- */

typedef struct yaml_ctx {
  const char *name;      /* file name used in error lines */
  yaml_document_t *doc;
  llorch_errmsg *em;
} yaml_ctx;

static bool node_is_null(const yaml_node_t *n) {
  if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return false;
  const char *v = (const char *)n->data.scalar.value;
  return v[0] == '\0' || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 ||
         strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0;
}

/* What the user wrote, for "got ..." in error lines. */
static void node_describe(const yaml_node_t *n, char *buf, size_t size) {
  if (n->type == YAML_MAPPING_NODE) snprintf(buf, size, "a mapping");
  else if (n->type == YAML_SEQUENCE_NODE) snprintf(buf, size, "a list");
  else if (node_is_null(n)) snprintf(buf, size, "nothing");
  else {
    char clip[96];
    snprintf(clip, sizeof clip, "%s", (const char *)n->data.scalar.value);
    if (strlen((const char *)n->data.scalar.value) >= sizeof clip) strcpy(clip + sizeof clip - 4, "...");
    config_quote(clip, buf, size);
  }
}

static int yaml_fail(yaml_ctx *y, const yaml_node_t *at, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* "file:line:col: <message>" with 1-based line and column. */
static int yaml_fail(yaml_ctx *y, const yaml_node_t *at, int err, const char *fmt, ...) {
  char msg[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  /* Keys and values from the file are quoted in msg; a scalar can hold line
   * breaks (folded plain scalars, escapes), and an error is one line. */
  llorch_str_oneline(msg);
  return llorch_errmsg_set(y->em, err, "%s:%zu:%zu: %s", y->name, at->start_mark.line + 1,
                           at->start_mark.column + 1, msg);
}

static int yaml_fail_value(yaml_ctx *y, const config_option *o, const char *path,
                           const yaml_node_t *value, int err) {
  char expected[256], got[128];
  if (err == LLORCH_ENOMEM) return llorch_errmsg_set(y->em, err, "%s: out of memory", y->name);
  config_value_expected(o, expected, sizeof expected);
  node_describe(value, got, sizeof got);
  return yaml_fail(y, value, err == LLORCH_ERANGE ? LLORCH_ERANGE : LLORCH_EFORMAT,
                   "'%s': expected %s, got %s", path, expected, got);
}

/* Rejects a key that appears twice in one mapping: YAML says keys are unique,
 * and silently taking the last one hides typos in long files. */
static int yaml_check_duplicate(yaml_ctx *y, const yaml_node_t *map, const yaml_node_pair_t *pair,
                                const char *path) {
  const yaml_node_t *key = yaml_document_get_node(y->doc, pair->key);
  for (const yaml_node_pair_t *p = map->data.mapping.pairs.start; p < pair; p++) {
    const yaml_node_t *k = yaml_document_get_node(y->doc, p->key);
    if (k->type == YAML_SCALAR_NODE &&
        strcmp((const char *)k->data.scalar.value, (const char *)key->data.scalar.value) == 0)
      return yaml_fail(y, key, LLORCH_EFORMAT, "'%s': duplicate key (first at line %zu)", path,
                       k->start_mark.line + 1);
  }
  return 0;
}

/* Reads a scalar or list value into the option's field. */
static int yaml_apply_simple(yaml_ctx *y, const config_option *o, void *base, const char *path,
                             const yaml_node_t *value) {
  if (o->type == CONFIG_TYPE_STRLIST && value->type == YAML_SEQUENCE_NODE) {
    config_value_free(o, base);
    size_t i = 0;
    for (yaml_node_item_t *it = value->data.sequence.items.start;
         it < value->data.sequence.items.top; it++, i++) {
      const yaml_node_t *item = yaml_document_get_node(y->doc, *it);
      char ipath[300];
      snprintf(ipath, sizeof ipath, "%s[%zu]", path, i);
      if (item->type != YAML_SCALAR_NODE || node_is_null(item)) {
        char got[128];
        node_describe(item, got, sizeof got);
        return yaml_fail(y, item, LLORCH_EFORMAT, "'%s': expected %s, got %s", ipath,
                         o->expect ? o->expect : "a non-empty string", got);
      }
      int err = config_list_append(o, base, (const char *)item->data.scalar.value);
      if (err) {
        char got[128];
        if (err == LLORCH_ENOMEM) return yaml_fail_value(y, o, path, item, err);
        node_describe(item, got, sizeof got);
        return yaml_fail(y, item, LLORCH_ERANGE, "'%s': expected %s, got %s", ipath,
                         o->expect ? o->expect : "a non-empty string", got);
      }
    }
    return 0;
  }
  if (value->type != YAML_SCALAR_NODE) return yaml_fail_value(y, o, path, value, LLORCH_EFORMAT);
  int err = config_value_parse(o, base, (const char *)value->data.scalar.value,
                               node_is_null(value), false);
  return err ? yaml_fail_value(y, o, path, value, err) : 0;
}

/* Lists the keys allowed in the mapping at prefix, for unknown-key errors. */
static void keys_at(const config_option *opts, size_t count, const char *prefix, char *buf,
                    size_t size) {
  size_t plen = prefix ? strlen(prefix) : 0;
  size_t w = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < count; i++) {
    const char *name = opts[i].name;
    if (plen && (strncmp(name, prefix, plen) != 0 || name[plen] != '.')) continue;
    const char *rest = plen ? name + plen + 1 : name;
    size_t len = strcspn(rest, ".");
    /* Skip a section already listed (options of a section are adjacent). */
    bool dup = false;
    for (size_t j = 0; j < i && !dup; j++) {
      const char *other = opts[j].name;
      if (plen && (strncmp(other, prefix, plen) != 0 || other[plen] != '.')) continue;
      const char *orest = plen ? other + plen + 1 : other;
      dup = strncmp(orest, rest, len) == 0 && (orest[len] == '.' || orest[len] == '\0');
    }
    if (dup || w >= size) continue;
    w += (size_t)snprintf(buf + w, size - w, "%s%.*s", w ? ", " : "", (int)len, rest);
  }
}

static int yaml_read_models(yaml_ctx *y, const config_option *o, void *base, const char *path,
                            const yaml_node_t *value) {
  llorch_model_list *list = (llorch_model_list *)(void *)((char *)base + o->offset);
  config_value_free(o, base);
  if (node_is_null(value)) return 0;
  if (value->type != YAML_SEQUENCE_NODE) return yaml_fail_value(y, o, path, value, LLORCH_EFORMAT);

  size_t n = (size_t)(value->data.sequence.items.top - value->data.sequence.items.start);
  if (n == 0) return 0;
  list->items = calloc(n, sizeof *list->items);
  if (!list->items) return llorch_errmsg_set(y->em, LLORCH_ENOMEM, "%s: out of memory", y->name);

  for (size_t i = 0; i < n; i++) {
    const yaml_node_t *entry = yaml_document_get_node(y->doc, value->data.sequence.items.start[i]);
    llorch_model_entry *e = &list->items[i];
    list->count = i + 1; /* so llorch_config_free() frees a half-read entry */
    char epath[300];
    snprintf(epath, sizeof epath, "%s[%zu]", path, i);
    for (size_t f = 0; f < config_model_fields_count; f++) {
      int err = config_value_default(&config_model_fields[f], e, LLORCH_ROLE_NONE);
      if (err) return llorch_errmsg_set(y->em, err, "%s: out of memory", y->name);
    }
    if (entry->type != YAML_MAPPING_NODE) {
      char got[128];
      node_describe(entry, got, sizeof got);
      return yaml_fail(y, entry, LLORCH_EFORMAT,
                       "'%s': expected a model entry {name, file, ...}, got %s", epath, got);
    }
    unsigned seen = 0; /* bit per field */
    for (yaml_node_pair_t *pair = entry->data.mapping.pairs.start;
         pair < entry->data.mapping.pairs.top; pair++) {
      const yaml_node_t *key = yaml_document_get_node(y->doc, pair->key);
      const yaml_node_t *val = yaml_document_get_node(y->doc, pair->value);
      if (key->type != YAML_SCALAR_NODE)
        return yaml_fail(y, key, LLORCH_EFORMAT, "'%s': keys must be plain words", epath);
      const char *k = (const char *)key->data.scalar.value;
      char fpath[400];
      snprintf(fpath, sizeof fpath, "%s.%s", epath, k);
      int err = yaml_check_duplicate(y, entry, pair, fpath);
      if (err) return err;
      size_t f = 0;
      while (f < config_model_fields_count && strcmp(config_model_fields[f].name, k) != 0) f++;
      if (f == config_model_fields_count) {
        char keys[256];
        keys_at(config_model_fields, config_model_fields_count, NULL, keys, sizeof keys);
        return yaml_fail(y, key, LLORCH_EFORMAT, "'%s': unknown key, expected one of: %s", fpath,
                         keys);
      }
      if ((err = yaml_apply_simple(y, &config_model_fields[f], e, fpath, val))) return err;
      seen |= 1u << f;
    }
    for (size_t f = 0; f < config_model_fields_count; f++) {
      const config_option *field = &config_model_fields[f];
      if (!(field->flags & CONFIG_OPT_REQUIRED)) continue;
      if (!(seen & (1u << f)))
        return yaml_fail(y, entry, LLORCH_EFORMAT, "'%s': missing required key '%s'", epath,
                         field->name);
      /* Present but null ("name: ~" or "name:") is as good as missing. */
      if (field->type == CONFIG_TYPE_STRING && *(char **)((char *)e + field->offset) == NULL)
        return yaml_fail(y, entry, LLORCH_EFORMAT, "'%s.%s': required, got null", epath,
                         field->name);
    }
    if (e->min_replicas > e->max_replicas)
      return yaml_fail(y, entry, LLORCH_ERANGE,
                       "'%s.min_replicas': expected at most max_replicas (%d), got %d", epath,
                       e->max_replicas, e->min_replicas);
    for (size_t j = 0; j < i; j++) {
      if (strcmp(list->items[j].name, e->name) == 0)
        return yaml_fail(y, entry, LLORCH_EFORMAT,
                         "'%s.name': expected a unique model name, got \"%s\" again (also %s[%zu])",
                         epath, e->name, path, j);
    }
  }
  return 0;
}

/* Walks one mapping whose keys extend prefix ("" at the top level). */
static int yaml_read_mapping(yaml_ctx *y, llorch_config *cfg, const yaml_node_t *map,
                             const char *prefix) {
  for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top;
       pair++) {
    const yaml_node_t *key = yaml_document_get_node(y->doc, pair->key);
    const yaml_node_t *value = yaml_document_get_node(y->doc, pair->value);
    if (key->type != YAML_SCALAR_NODE)
      return yaml_fail(y, key, LLORCH_EFORMAT, "'%s': keys must be plain words",
                       *prefix ? prefix : "(top level)");
    char path[256];
    int plen = snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "",
                        (const char *)key->data.scalar.value);
    if (plen < 0 || (size_t)plen >= sizeof path)
      return yaml_fail(y, key, LLORCH_EFORMAT, "key too long");
    int err = yaml_check_duplicate(y, map, pair, path);
    if (err) return err;

    const config_option *o = NULL;
    bool is_section = false;
    for (size_t i = 0; i < config_options_count && !o; i++) {
      const char *name = config_options[i].name;
      if (strcmp(name, path) == 0) o = &config_options[i];
      else if (strncmp(name, path, (size_t)plen) == 0 && name[plen] == '.') is_section = true;
    }
    if (o) {
      err = o->type == CONFIG_TYPE_MODELS ? yaml_read_models(y, o, cfg, path, value)
                                          : yaml_apply_simple(y, o, cfg, path, value);
    } else if (is_section) {
      if (node_is_null(value)) continue; /* "worker:" with nothing under it */
      if (value->type != YAML_MAPPING_NODE) {
        char got[128];
        node_describe(value, got, sizeof got);
        return yaml_fail(y, value, LLORCH_EFORMAT, "'%s': expected a mapping of options, got %s",
                         path, got);
      }
      err = yaml_read_mapping(y, cfg, value, path);
    } else {
      char keys[512];
      keys_at(config_options, config_options_count, *prefix ? prefix : NULL, keys, sizeof keys);
      return yaml_fail(y, key, LLORCH_EFORMAT, "'%s': unknown key, expected one of: %s", path,
                       keys);
    }
    if (err) return err;
  }
  return 0;
}

int llorch_config_load_string(llorch_config *cfg, const char *name, const char *text, size_t len,
                              llorch_errmsg *em) {
  yaml_parser_t parser;
  yaml_document_t doc;
  int err = 0;

  if (!yaml_parser_initialize(&parser))
    return llorch_errmsg_set(em, LLORCH_ENOMEM, "%s: out of memory", name);
  yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
  if (!yaml_parser_load(&parser, &doc)) {
    err = llorch_errmsg_set(em, LLORCH_EFORMAT, "%s:%zu:%zu: YAML syntax error: %s%s%s", name,
                            parser.problem_mark.line + 1, parser.problem_mark.column + 1,
                            parser.problem ? parser.problem : "unknown",
                            parser.context ? " " : "", parser.context ? parser.context : "");
    goto fail_parser;
  }

  yaml_ctx y = {.name = name, .doc = &doc, .em = em};
  const yaml_node_t *root = yaml_document_get_root_node(&doc);
  if (root && !node_is_null(root)) {
    if (root->type != YAML_MAPPING_NODE) {
      char got[128];
      node_describe(root, got, sizeof got);
      err = yaml_fail(&y, root, LLORCH_EFORMAT, "expected a mapping of options, got %s", got);
    } else {
      err = yaml_read_mapping(&y, cfg, root, "");
    }
  }
  yaml_document_delete(&doc);
  if (err) goto fail_parser;

  /* A second document would be silently ignored: refuse it. */
  if (!yaml_parser_load(&parser, &doc)) {
    err = llorch_errmsg_set(em, LLORCH_EFORMAT, "%s:%zu:%zu: YAML syntax error: %s", name,
                            parser.problem_mark.line + 1, parser.problem_mark.column + 1,
                            parser.problem ? parser.problem : "unknown");
    goto fail_parser;
  }
  root = yaml_document_get_root_node(&doc);
  if (root) {
    err = llorch_errmsg_set(em, LLORCH_EFORMAT,
                            "%s:%zu:%zu: expected one YAML document, got a second one", name,
                            root->start_mark.line + 1, root->start_mark.column + 1);
  }
  yaml_document_delete(&doc);

fail_parser:
  yaml_parser_delete(&parser);
  return err;
}

int llorch_config_load_file(llorch_config *cfg, const char *path, llorch_errmsg *em) {
  char *text = NULL;
  size_t len = 0;
  int err = llorch_file_read(path, "config file", (size_t)16 << 20, &text, &len, em);
  if (err < 0) return err;
  err = llorch_config_load_string(cfg, path, text, len, em);
  if (!err) {
    char *copy = strdup(path);
    if (!copy) {
      err = llorch_errmsg_set(em, LLORCH_ENOMEM, "%s: out of memory", path);
      goto done;
    }
    free(cfg->path);
    cfg->path = copy;
  }
done:
  free(text);
  return err;
}

/* ---- command-line flags ---- */

static int args_fail_value(llorch_errmsg *em, const config_option *o, const char *flag,
                           const char *value, int err) {
  char expected[256], got[128];
  if (err == LLORCH_ENOMEM) return llorch_errmsg_set(em, err, "out of memory");
  config_value_expected(o, expected, sizeof expected);
  config_quote(value, got, sizeof got);
  return llorch_errmsg_set(em, LLORCH_EINVAL, "--%s ('%s'): expected %s, got %s", flag, o->name,
                           expected, got);
}

int llorch_config_apply_args(llorch_config *cfg, int argc, char **argv, llorch_errmsg *em) {
  /* A list flag replaces the file's list on its first use and appends after,
   * so "--model-dir a --model-dir b" means [a, b] whatever the file said. */
  bool *listed = calloc(config_options_count, sizeof *listed);
  int err = 0;
  if (!listed) return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");

  for (int i = 0; i < argc; i++) {
    const char *arg = argv[i];
    if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
      err = llorch_errmsg_set(em, LLORCH_EINVAL, "unexpected argument '%s'", arg);
      goto done;
    }
    char flag[64];
    const char *eq = strchr(arg + 2, '=');
    size_t flen = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
    if (flen >= sizeof flag) flen = sizeof flag - 1;
    memcpy(flag, arg + 2, flen);
    flag[flen] = '\0';

    /* One flag may set several options: --cluster-token is the pool's and
     * the orchestrator's, and --role=all has both. */
    bool known = false, applies = false, is_bool = false;
    for (size_t k = 0; k < config_options_count; k++) {
      const config_option *o = &config_options[k];
      if (!o->flag || strcmp(o->flag, flag) != 0) continue;
      known = true;
      if (cfg->role == LLORCH_ROLE_NONE || (o->roles & cfg->role)) applies = true;
      if (o->type == CONFIG_TYPE_BOOL) is_bool = true;
    }
    if (!known) {
      err = llorch_errmsg_set(em, LLORCH_EINVAL, "unknown flag '--%s'", flag);
      goto done;
    }
    if (!applies) {
      err = llorch_errmsg_set(em, LLORCH_EINVAL, "flag '--%s' is not valid for --role=%s", flag,
                              llorch_role_name(cfg->role));
      goto done;
    }
    const char *value;
    if (eq) value = eq + 1;
    else if (is_bool && (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0)) value = "true";
    else if (i + 1 < argc) value = argv[++i];
    else {
      err = llorch_errmsg_set(em, LLORCH_EINVAL, "flag '--%s' needs a value", flag);
      goto done;
    }

    for (size_t k = 0; k < config_options_count; k++) {
      const config_option *o = &config_options[k];
      if (!o->flag || strcmp(o->flag, flag) != 0) continue;
      if (cfg->role != LLORCH_ROLE_NONE && !(o->roles & cfg->role)) continue;
      err = config_value_parse(o, cfg, value, false, listed[k]);
      if (err) {
        err = args_fail_value(em, o, flag, value, err);
        goto done;
      }
      listed[k] = true;
    }
  }
done:
  free(listed);
  return err;
}

/* ---- checks across options, derived defaults ---- */

/* "http://HOST:PORT" from listen; a wildcard address becomes the host name,
 * the best guess at what other machines can reach. */
static int config_derive_advertise_url(llorch_config *cfg, const char *hostname) {
  const char *listen = cfg->listen;
  const char *colon = listen[0] == '[' ? strchr(listen, ']') + 1 : strrchr(listen, ':');
  size_t hlen = (size_t)(colon - listen);
  char host[300];
  if (hlen == 0 || (hlen == 7 && strncmp(listen, "0.0.0.0", 7) == 0) ||
      (hlen == 4 && strncmp(listen, "[::]", 4) == 0))
    snprintf(host, sizeof host, "%s", hostname);
  else
    snprintf(host, sizeof host, "%.*s", (int)hlen, listen);
  char url[400];
  snprintf(url, sizeof url, "http://%s:%s", host, colon + 1);
  cfg->pool.advertise_url = strdup(url);
  return cfg->pool.advertise_url ? 0 : LLORCH_ENOMEM;
}

bool llorch_config_listen_is_loopback(const llorch_config *cfg) {
  const char *listen = cfg->listen ? cfg->listen : "";
  const char *host = listen;
  size_t hlen;
  if (listen[0] == '[') {
    const char *close = strchr(listen, ']');
    if (!close) return false;
    host = listen + 1;
    hlen = (size_t)(close - host);
  } else {
    const char *colon = strrchr(listen, ':');
    hlen = colon ? (size_t)(colon - listen) : strlen(listen);
  }
  char h[256];
  if (hlen == 0 || hlen >= sizeof h) return false; /* ":8080" is every address */
  memcpy(h, host, hlen);
  h[hlen] = '\0';
  if (strcmp(h, "::1") == 0 || strcasecmp(h, "localhost") == 0) return true;
  struct in_addr a;
  return inet_pton(AF_INET, h, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

/*
 * A role that other machines can reach must be able to tell its peers from
 * strangers: without its machine credential it would hand the cluster (or
 * the worker) to anyone who reaches the port.
 */
static int config_check_exposure(const llorch_config *cfg, llorch_errmsg *em) {
  const char *key = NULL, *flag = NULL;
  bool have = true;
  switch (cfg->role) {
    case LLORCH_ROLE_ORCHESTRATOR:
    case LLORCH_ROLE_ALL:
      key = "orchestrator.cluster_token", flag = "--cluster-token";
      have = cfg->orchestrator.cluster_token != NULL;
      break;
    case LLORCH_ROLE_POOL:
      key = "pool.cluster_token", flag = "--cluster-token";
      have = cfg->pool.cluster_token != NULL;
      break;
    case LLORCH_ROLE_WORKER:
      key = "worker.token", flag = "--token";
      have = cfg->worker.token != NULL;
      break;
    default:
      return 0;
  }
  if (have || llorch_config_listen_is_loopback(cfg)) return 0;
  char env[96];
  llorch_config_env_name(key, env, sizeof env);
  return llorch_errmsg_set(em, LLORCH_EINVAL,
                           "listen %s is reachable beyond loopback but no '%s' is set: give %s TOKEN "
                           "or the environment variable %s (or listen on 127.0.0.1)",
                           cfg->listen, key, flag, env);
}

int llorch_config_finish(llorch_config *cfg, llorch_errmsg *em) {
  if (cfg->role == LLORCH_ROLE_WORKER && !cfg->worker.model)
    return llorch_errmsg_set(em, LLORCH_EINVAL,
                             "'worker.model' is required for --role=worker (--model FILE)");
  int err = config_check_exposure(cfg, em);
  if (err) return err;

  char hostname[256];
  if (gethostname(hostname, sizeof hostname) != 0 || hostname[0] == '\0')
    snprintf(hostname, sizeof hostname, "localhost");
  hostname[sizeof hostname - 1] = '\0';

  if (!cfg->pool.name) {
    /* The default name must pass the same check as a configured one. */
    char name[64];
    snprintf(name, sizeof name, "%.63s", hostname);
    for (char *p = name; *p; p++)
      if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-') *p = '-';
    if (!(cfg->pool.name = strdup(name)))
      return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");
  }
  if (!cfg->pool.advertise_url && config_derive_advertise_url(cfg, hostname) != 0)
    return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");
  return 0;
}

/* ---- the environment ---- */

void llorch_config_env_name(const char *key, char *buf, size_t n) {
  size_t w = (size_t)snprintf(buf, n, "LLORCH_");
  for (const char *k = key; *k && w + 1 < n; k++)
    buf[w++] = *k == '.' ? '_' : (char)toupper((unsigned char)*k);
  if (w < n) buf[w] = '\0';
}

int llorch_config_apply_env(llorch_config *cfg, llorch_errmsg *em) {
  for (size_t k = 0; k < config_options_count; k++) {
    const config_option *o = &config_options[k];
    if (o->type == CONFIG_TYPE_MODELS) continue; /* a list of mappings: files only */
    if (cfg->role != LLORCH_ROLE_NONE && !(o->roles & cfg->role)) continue;
    char name[96];
    llorch_config_env_name(o->name, name, sizeof name);
    const char *value = getenv(name);
    if (!value) continue;
    /* A list from the environment replaces the file's list, as a flag does.
     * Set but empty is an error (every option here is a secret): an empty
     * token must never read as "no authentication". */
    int err = config_value_parse(o, cfg, value, false, false);
    if (err == LLORCH_ENOMEM) return llorch_errmsg_set(em, err, "out of memory");
    if (err) {
      char expected[160];
      config_value_expected(o, expected, sizeof expected);
      /* A secret's value is never repeated, not even in an error line. */
      if (o->flags & CONFIG_OPT_SECRET)
        return llorch_errmsg_set(em, err, "environment %s ('%s'): expected %s", name, o->name,
                                 expected);
      char shown[128];
      config_quote(value, shown, sizeof shown);
      return llorch_errmsg_set(em, err, "environment %s ('%s'): expected %s, got %s", name,
                               o->name, expected, shown);
    }
  }
  return 0;
}

int llorch_config_load(llorch_config *cfg, llorch_role role, const char *path, int argc,
                       char **argv, llorch_errmsg *em) {
  int err = llorch_config_init(cfg, role);
  if (err) return llorch_errmsg_set(em, err, "out of memory");
  if (path && (err = llorch_config_load_file(cfg, path, em))) goto fail;
  if ((err = llorch_config_apply_env(cfg, em))) goto fail;
  if ((err = llorch_config_apply_args(cfg, argc, argv, em))) goto fail;
  if ((err = llorch_config_finish(cfg, em))) goto fail;
  return 0;
fail:
  llorch_config_free(cfg);
  return err;
}
