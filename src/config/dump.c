/*
 * Writing the configuration back out: `llorch config --dump` (YAML that
 * reads back to the same values) and `llorch --help` (the flags), both
 * generated from the option table.
 */
#include <string.h>

#include "config-impl.h"

/* ---- dump ---- */

/* Number of leading dotted components a and b share ("http.x", "http.y" -> 1). */
static size_t common_depth(const char *a, const char *b) {
  size_t depth = 0;
  for (;;) {
    size_t la = strcspn(a, "."), lb = strcspn(b, ".");
    if (a[la] == '\0' || b[lb] == '\0' || la != lb || strncmp(a, b, la) != 0) return depth;
    depth++;
    a += la + 1;
    b += lb + 1;
  }
}

static bool option_applies(const config_option *o, llorch_role role) {
  return role == LLORCH_ROLE_NONE || (o->roles & role);
}

static void dump_value(FILE *out, const config_option *o, const void *base, unsigned flags) {
  char buf[8192];
  bool redact = (o->flags & CONFIG_OPT_SECRET) && !(flags & LLORCH_CONFIG_DUMP_SECRETS);
  if (redact) {
    /* Say whether something is set without showing it. */
    bool set = o->type == CONFIG_TYPE_STRLIST
                   ? ((const llorch_strlist *)(const void *)((const char *)base + o->offset))->count > 0
                   : *(char *const *)(const void *)((const char *)base + o->offset) != NULL;
    fprintf(out, " %s\n", set ? "\"<redacted>\"" : (o->type == CONFIG_TYPE_STRLIST ? "[]" : "~"));
    return;
  }
  config_value_format(o, base, buf, sizeof buf);
  fprintf(out, " %s\n", buf);
}

static void dump_models(FILE *out, const llorch_model_list *models, unsigned flags, int indent) {
  if (models->count == 0) {
    fprintf(out, " []\n");
    return;
  }
  fputc('\n', out);
  for (size_t i = 0; i < models->count; i++) {
    for (size_t f = 0; f < config_model_fields_count; f++) {
      fprintf(out, "%*s%s %s:", indent, "", f == 0 ? "-" : " ", config_model_fields[f].name);
      dump_value(out, &config_model_fields[f], &models->items[i], flags);
    }
  }
}

int llorch_config_dump(const llorch_config *cfg, FILE *out, unsigned flags) {
  const char *prev = "";
  fprintf(out, "# llorch configuration (role: %s)\n", llorch_role_name(cfg->role));
  for (size_t i = 0; i < config_options_count; i++) {
    const config_option *o = &config_options[i];
    if (!option_applies(o, cfg->role)) continue;
    /* Open the sections this option needs beyond those it shares with the
     * previous one: the table keeps a section's options together. */
    size_t depth = common_depth(prev, o->name);
    const char *p = o->name;
    for (size_t d = 0; d < depth; d++) p += strcspn(p, ".") + 1;
    size_t level = depth;
    for (size_t len; p[len = strcspn(p, ".")] == '.'; p += len + 1, level++)
      fprintf(out, "%*s%.*s:\n", (int)(2 * level), "", (int)len, p);
    fprintf(out, "%*s%s:", (int)(2 * level), "", p);
    if (o->type == CONFIG_TYPE_MODELS)
      dump_models(out, (const llorch_model_list *)(const void *)((const char *)cfg + o->offset),
                  flags, (int)(2 * level) + 2);
    else
      dump_value(out, o, cfg, flags);
    prev = o->name;
  }
  fflush(out);
  return ferror(out) ? LLORCH_EIO : 0;
}

/* ---- --help ---- */

static void usage_section(FILE *out, const char *title, unsigned roles, llorch_role role) {
  bool header = false;
  for (size_t i = 0; i < config_options_count; i++) {
    const config_option *o = &config_options[i];
    if (!o->flag || o->roles != roles) continue;
    if (role != LLORCH_ROLE_NONE && !(o->roles & role)) continue;
    if (!header) {
      fprintf(out, "\n%s:\n", title);
      header = true;
    }
    char left[64], def[96] = "";
    snprintf(left, sizeof left, "--%s %s", o->flag, o->meta ? o->meta : "VALUE");
    if (o->def && !(o->flags & CONFIG_OPT_SECRET) && o->type != CONFIG_TYPE_STRLIST &&
        !o->def_role[CONFIG_ROLE_IX_POOL])
      snprintf(def, sizeof def, " (default %s)", o->def);
    if (strlen(left) > 28) fprintf(out, "  %s\n  %-28s", left, ""); /* too wide: own line */
    else fprintf(out, "  %-28s", left);
    fprintf(out, " %s%s [%s]\n", o->help, def, o->name);
    if (o->type == CONFIG_TYPE_ENUM) {
      char expected[128];
      config_value_expected(o, expected, sizeof expected);
      fprintf(out, "  %-28s %s\n", "", expected);
    }
  }
}

void llorch_config_usage(FILE *out, llorch_role role) {
  /* Sections by the role set an option belongs to; the pool's orchestrator
   * URL and cluster token only make sense for a separate pool process. */
  usage_section(out, "common flags", CONFIG_ROLES_ANY, role);
  usage_section(out, "worker flags (--role=worker)", LLORCH_ROLE_WORKER, role);
  usage_section(out, "pool flags (--role=pool or all)", LLORCH_ROLE_POOL | LLORCH_ROLE_ALL, role);
  usage_section(out, "pool flags (--role=pool)", LLORCH_ROLE_POOL, role);
  usage_section(out, "orchestrator flags (--role=orchestrator or all)",
                LLORCH_ROLE_ORCHESTRATOR | LLORCH_ROLE_ALL, role);
  fprintf(out,
          "\nValues: durations 500ms, 10s, 5m (plain numbers are seconds); sizes 512MiB, 8GiB;\n"
          "lists comma-separated (--gpus=0,1) or repeated. Flags override the config file,\n"
          "which overrides the defaults. Options without a flag (http.*, orchestrator.models,\n"
          "...) are set in the file; `llorch config --dump [--role R]` prints them all.\n");
}

/* ---- the Markdown reference (README) ---- */

static void reference_roles(const config_option *o, char *buf, size_t len) {
  static const struct {
    unsigned bit;
    const char *name;
  } names[] = {{LLORCH_ROLE_ORCHESTRATOR, "orchestrator"},
               {LLORCH_ROLE_POOL, "pool"},
               {LLORCH_ROLE_WORKER, "worker"},
               {LLORCH_ROLE_ALL, "all"}};
  if (o->roles == CONFIG_ROLES_ANY) {
    snprintf(buf, len, "any");
    return;
  }
  buf[0] = '\0';
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    if (!(o->roles & names[i].bit)) continue;
    size_t w = strlen(buf);
    snprintf(buf + w, len - w, "%s%s", w ? ", " : "", names[i].name);
  }
}

/* A table cell: '|' would end the cell early, so it is escaped. */
static void reference_cell(FILE *out, const char *s) {
  for (; *s; s++) {
    if (*s == '|') fputs("\\|", out);
    else fputc(*s, out);
  }
}

static void reference_default(FILE *out, const config_option *o) {
  if (o->def_role[CONFIG_ROLE_IX_POOL] || o->def_role[CONFIG_ROLE_IX_WORKER]) {
    fputs("per role, see meaning", out);
  } else if (o->def && !(o->flags & CONFIG_OPT_SECRET)) {
    fputc('`', out);
    reference_cell(out, o->def);
    fputc('`', out);
  } else if (o->flags & CONFIG_OPT_REQUIRED) {
    fputs("required", out);
  } else {
    fputs("unset", out);
  }
}

void llorch_config_reference(FILE *out) {
  fputs("| key | flag | roles | default | meaning |\n| --- | --- | --- | --- | --- |\n", out);
  for (size_t i = 0; i < config_options_count; i++) {
    const config_option *o = &config_options[i];
    char roles[64], expected[160];
    reference_roles(o, roles, sizeof roles);
    fprintf(out, "| `%s` | ", o->name);
    if (o->flag) fprintf(out, "`--%s`", o->flag);
    fprintf(out, " | %s | ", roles);
    reference_default(out, o);
    fputs(" | ", out);
    reference_cell(out, o->help);
    if (o->type == CONFIG_TYPE_ENUM) {
      config_value_expected(o, expected, sizeof expected);
      fputs("; ", out);
      reference_cell(out, expected);
    }
    fputs(" |\n", out);
  }
  fputs("\nEach entry of `orchestrator.models`:\n\n"
        "| field | default | meaning |\n| --- | --- | --- |\n", out);
  for (size_t i = 0; i < config_model_fields_count; i++) {
    const config_option *o = &config_model_fields[i];
    fprintf(out, "| `%s` | ", o->name);
    reference_default(out, o);
    fputs(" | ", out);
    reference_cell(out, o->help);
    fputs(" |\n", out);
  }
}
