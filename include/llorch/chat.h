/*
 * Chat templates: turning a list of messages into the prompt text a model
 * was trained on.
 *
 * llorch does not run Jinja. It recognises the template family from
 * distinctive markers in tokenizer.chat_template (as llama.cpp's
 * llm_chat_detect_template does) and renders that family the way its
 * reference template does:
 *
 *   chatml   <|im_start|>role\n...<|im_end|>\n            Qwen 2 / 2.5 / 3
 *            plus the default system prompt when the template has one and
 *            the messages do not start with a system message
 *   llama3   <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>
 *            (3.1+ templates: the "Cutting Knowledge Date" system header)
 *   llama2   [INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST] ... </s><s>[INST] ...
 *   mistral  [INST] ... [/INST]...</s>  (a system message joins the first
 *            user message, separated by a blank line)
 *   phi3     <|role|>\n...<|end|>\n
 *   gemma    <start_of_turn>user\n...<end_of_turn>\n, assistant -> model;
 *            no system role: it is prepended to the first user turn
 *
 * The text never begins with the BOS token's text: tokenize it with
 * LLORCH_TOKENIZE_ADD_SPECIAL | LLORCH_TOKENIZE_PARSE_SPECIAL so the
 * tokenizer adds BOS where the vocabulary wants one (llama.cpp likewise
 * strips a leading BOS from rendered templates to avoid doubling it).
 */
#ifndef LLORCH_CHAT_H
#define LLORCH_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include "llorch/error.h"
#include "llorch/tokenizer.h"

typedef enum llorch_chat_family {
  LLORCH_CHAT_UNKNOWN = 0,
  LLORCH_CHAT_CHATML,
  LLORCH_CHAT_LLAMA3,
  LLORCH_CHAT_LLAMA2,
  LLORCH_CHAT_MISTRAL,
  LLORCH_CHAT_PHI3,
  LLORCH_CHAT_GEMMA,
} llorch_chat_family;

typedef struct llorch_chat_message {
  const char *role;    /* "system", "user" or "assistant" */
  const char *content; /* NUL-terminated UTF-8 */
} llorch_chat_message;

/* "chatml", "llama3", ...; "unknown" for LLORCH_CHAT_UNKNOWN. */
const char *llorch_chat_family_name(llorch_chat_family f);
/* Parses a family name (also "qwen" for chatml); LLORCH_EINVAL listing the
 * known names otherwise. */
int llorch_chat_family_parse(const char *name, llorch_chat_family *out, llorch_errmsg *em);
/* The family a template's text belongs to, LLORCH_CHAT_UNKNOWN if none. */
llorch_chat_family llorch_chat_detect(const char *template_text);

typedef struct llorch_chat llorch_chat;

/*
 * template_text: tokenizer.chat_template or NULL; family: a name for
 * llorch_chat_family_parse, or NULL to detect it from the text; eos_text:
 * the EOS token's text, used by the families that write it (NULL: the
 * family's usual one). Errors (LLORCH_EINVAL, em says which): no template
 * and no family named; a template of no supported family and no family
 * named; an unknown family name.
 */
int llorch_chat_init(llorch_chat **out, const char *template_text, const char *family,
                     const char *eos_text, llorch_errmsg *em);
/* The same with the template and EOS text of a loaded tokenizer. */
int llorch_chat_init_tokenizer(llorch_chat **out, const llorch_tokenizer *t, const char *family,
                               llorch_errmsg *em);
void llorch_chat_free(llorch_chat *c);

llorch_chat_family llorch_chat_family_of(const llorch_chat *c);
/* The default system prompt taken from the template, or NULL. */
const char *llorch_chat_default_system(const llorch_chat *c);
/* Llama 3.1+ templates print today's date; fix it (e.g. "26 Jul 2024") for
 * reproducible prompts. NULL goes back to today's date. */
int llorch_chat_set_date(llorch_chat *c, const char *date);

/*
 * Renders n messages into a malloc'ed NUL-terminated string (*out, *out_len
 * bytes). add_generation_prompt appends the opening of an assistant turn
 * where the family has one. Roles are validated: only system, user and
 * assistant; families whose templates require it (llama2, mistral, gemma)
 * also require a system message to come first and user/assistant turns to
 * alternate starting with user. Returns 0, LLORCH_EINVAL (em names the
 * message and the problem) or LLORCH_ENOMEM.
 */
int llorch_chat_render(const llorch_chat *c, const llorch_chat_message *msgs, size_t n,
                       bool add_generation_prompt, char **out, size_t *out_len, llorch_errmsg *em);

#endif /* LLORCH_CHAT_H */
