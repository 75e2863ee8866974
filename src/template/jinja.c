/*
 * The public face of the Jinja engine (include/llorch/jinja.h): compile once
 * into an arena that lives with the template, render into a per-render
 * arena that is dropped when the render returns.
 */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "jinja-impl.h"

#define JINJA_MAX_SOURCE (1u << 20)

struct llorch_jinja {
  jarena arena; /* tokens, AST and literals */
  jnodes body;
};

int jinja_exec(jctx *c, jscope *sc, const jnodes *body, jsb *out);

int llorch_jinja_compile(llorch_jinja **out, const char *src, size_t len, llorch_errmsg *em) {
  *out = NULL;
  if (len > JINJA_MAX_SOURCE)
    return llorch_errmsg_set(em, LLORCH_ELIMIT, "template is %zu bytes; at most %u are accepted", len,
                             JINJA_MAX_SOURCE);
  llorch_jinja *t = calloc(1, sizeof *t);
  if (!t) return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory compiling a template");
  jtok *toks;
  size_t n;
  int rc = jinja_lex(&t->arena, src, len, &toks, &n, em);
  if (rc == 0) rc = jinja_parse(&t->arena, toks, n, &t->body, em);
  if (rc != 0) {
    llorch_jinja_free(t);
    return rc;
  }
  *out = t;
  return 0;
}

void llorch_jinja_free(llorch_jinja *t) {
  if (!t) return;
  jarena_free(&t->arena);
  free(t);
}

void llorch_jinja_output_free(llorch_jinja_output *out) {
  if (!out) return;
  free(out->text);
  free(out->from_request);
  *out = (llorch_jinja_output){0};
}

static int set_trusted(jctx *c, jscope *sc, const char *name, const char *value) {
  jv v;
  if (jv_cstr(c, value ? value : "", value ? strlen(value) : 0, &v) < 0) return -1;
  return jscope_set(c, sc, name, strlen(name), v);
}

int llorch_jinja_render(const llorch_jinja *t, const cJSON *context, const llorch_jinja_render_opts *opts,
                        llorch_jinja_output *out, llorch_errmsg *em) {
  static const llorch_jinja_render_opts no_opts = {0};
  if (!opts) opts = &no_opts;
  *out = (llorch_jinja_output){0};
  jctx c = {.em = em};
  c.max_steps = opts->limits.max_steps ? opts->limits.max_steps : 20000000;
  c.max_output = opts->limits.max_output ? opts->limits.max_output : 16u << 20;
  c.arena.limit = opts->limits.max_memory ? opts->limits.max_memory : 256u << 20;
  c.max_depth = opts->limits.max_depth ? opts->limits.max_depth : 500;
  c.now = opts->now ? opts->now : time(NULL);
  jsb sb = {0};
  jscope *builtins = jscope_new(&c, NULL);
  jscope *globals = builtins ? jscope_new(&c, builtins) : NULL;
  if (!globals || jinja_globals_init(&c, builtins) < 0) goto fail;
  if (context && !cJSON_IsObject(context)) {
    jctx_fail(&c, LLORCH_EINVAL, "the render context must be a JSON object");
    goto fail;
  }
  for (const cJSON *e = context ? context->child : NULL; e; e = e->next) {
    jv v;
    if (!e->string) continue;
    if (jv_from_cjson(&c, e, true, &v) < 0) goto fail;
    /* names live as long as the arena: copy */
    jstr *name = jstr_new(&c, e->string, strlen(e->string), false);
    if (!name || jscope_set(&c, globals, name->s, name->len, v) < 0) goto fail;
  }
  if (set_trusted(&c, globals, "bos_token", opts->bos_token) < 0 ||
      set_trusted(&c, globals, "eos_token", opts->eos_token) < 0)
    goto fail;
  if (jinja_exec(&c, globals, &t->body, &sb) < 0) goto fail;
  if (sb.oom) {
    jctx_fail(&c, LLORCH_ENOMEM, "MemoryError: out of memory");
    goto fail;
  }
  if (!sb.s && !(sb.s = calloc(1, 1))) {
    jctx_fail(&c, LLORCH_ENOMEM, "MemoryError: out of memory");
    goto fail;
  }
  out->text = sb.s;
  out->len = sb.len;
  out->from_request = NULL;
  if (sb.taint) {
    bool any = false;
    for (size_t i = 0; i < sb.len && !any; i++) any = sb.taint[i];
    if (any) out->from_request = sb.taint;
    else free(sb.taint);
  }
  jarena_free(&c.arena);
  return 0;
fail:
  jsb_free(&sb);
  jarena_free(&c.arena);
  if (!c.err) {
    c.err = LLORCH_ENOMEM;
    llorch_errmsg_set(em, LLORCH_ENOMEM, "MemoryError: the template used more than its memory limit");
  }
  return c.err == LLORCH_ENOMEM || c.err == LLORCH_ELIMIT ? c.err : LLORCH_EINVAL;
}
