/*
 * Jinja templates: the chat templates that GGUF files carry in
 * tokenizer.chat_template, rendered the way Hugging Face transformers does.
 *
 * Semantics are jinja2 3.1's in transformers' configuration: an immutable
 * sandbox with trim_blocks and lstrip_blocks, the loopcontrols extension
 * ({% break %}, {% continue %}), {% generation %} blocks rendered as their
 * body, and the globals raise_exception(msg), strftime_now(fmt) and the
 * tojson filter of transformers (json.dumps with ensure_ascii=False).
 * Values print as Python prints them (True, None, ['a', 1]) because
 * templates sometimes rely on it.
 *
 * Sandbox: a template reads only the variables it is given. There is no
 * loader (include/import/extends are errors), no file or process access, and
 * mutating methods (list.append, dict.update) are refused as jinja2's
 * immutable sandbox refuses them. A render is bounded in steps, output bytes,
 * memory and nesting depth; running past a bound is an error naming it.
 *
 * Provenance: every string that comes from the render context (the request:
 * messages, tools, kwargs) is request text. The renderer tracks, byte by
 * byte through concatenation, slicing, filters and methods, which output
 * bytes came from request text, so the caller can tokenize special-token
 * markers only where the template itself wrote them (a user cannot forge a
 * turn by typing "<|im_start|>").
 *
 * A compiled template is immutable: compile once (at model load), render from
 * any number of threads at once.
 */
#ifndef LLORCH_JINJA_H
#define LLORCH_JINJA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "llorch/error.h"

struct cJSON;

typedef struct llorch_jinja llorch_jinja;

/*
 * Parses src (len bytes, UTF-8) into a template. A syntax error gets
 * LLORCH_EFORMAT and em says "TemplateSyntaxError: <what> (line N)".
 * LLORCH_ELIMIT for a template over 1 MiB or nested deeper than the parser
 * allows; LLORCH_ENOMEM.
 */
int llorch_jinja_compile(llorch_jinja **out, const char *src, size_t len, llorch_errmsg *em);
void llorch_jinja_free(llorch_jinja *t);

/* Bounds of one render; zero fields take the defaults in brackets. */
typedef struct llorch_jinja_limits {
  uint64_t max_steps;  /* evaluation steps [20,000,000] */
  size_t max_output;   /* bytes of rendered text [16 MiB] */
  size_t max_memory;   /* bytes of values alive during the render [256 MiB] */
  unsigned max_depth;  /* macro calls and nested evaluation [500] */
} llorch_jinja_limits;

typedef struct llorch_jinja_render_opts {
  const char *bos_token; /* the model's, not request text; NULL: "" */
  const char *eos_token; /* likewise */
  time_t now;            /* strftime_now's clock (UTC); 0: the current time */
  llorch_jinja_limits limits;
} llorch_jinja_render_opts;

typedef struct llorch_jinja_output {
  char *text;            /* (len + 1) malloc'ed, NUL-terminated */
  size_t len;            /* bytes */
  uint8_t *from_request; /* (len) 1 where the byte came from request text; NULL when none did */
} llorch_jinja_output;

/*
 * Renders t with the variables of context, a JSON object (messages, tools,
 * add_generation_prompt, chat_template_kwargs' keys, ...): each key is a
 * template variable, JSON values become dicts, lists, strings, numbers,
 * booleans and None. Every string in context is request text (see above);
 * opts' bos_token and eos_token are set as variables that are not.
 * Returns 0 and fills out (free with llorch_jinja_output_free), or
 * LLORCH_EINVAL with em holding the template's error as jinja2 names it,
 * e.g. "TemplateError: System role not supported" (raise_exception) or
 * "UndefinedError: 'functions' is undefined"; LLORCH_ELIMIT for a bound
 * (em names it); LLORCH_ENOMEM.
 */
int llorch_jinja_render(const llorch_jinja *t, const struct cJSON *context,
                        const llorch_jinja_render_opts *opts, llorch_jinja_output *out, llorch_errmsg *em);
void llorch_jinja_output_free(llorch_jinja_output *out);

#endif /* LLORCH_JINJA_H */
