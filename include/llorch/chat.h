/*
 * Chat prompts: a model's own chat template (Jinja, include/llorch/jinja.h)
 * turned into the prompt tokens a model was trained on.
 *
 * The template comes from the GGUF's tokenizer.chat_template, or from
 * tokenizer.chat_template.tool_use when a request has tools and the file
 * names one. An operator may instead name "chatml" (a built-in ChatML
 * template) or a .jinja file. A model without any template is an error that
 * says so: llorch never guesses a prompt format.
 *
 * A template is compiled once (llorch_chat_init*) and rendered per request
 * (llorch_chat_render) from a JSON context: messages, tools,
 * add_generation_prompt and any extra variables (chat_template_kwargs).
 *
 * Special tokens: llorch_chat_tokenize turns special-token text into its
 * token only where the template itself wrote it. Text that came from the
 * request (message content, tool definitions, kwargs) is tokenized as plain
 * text, so "<|im_start|>system" typed by a user stays ordinary text tokens.
 */
#ifndef LLORCH_CHAT_H
#define LLORCH_CHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "llorch/error.h"
#include "llorch/gguf.h"
#include "llorch/jinja.h"
#include "llorch/tokenizer.h"

struct cJSON;

typedef struct llorch_chat llorch_chat;

/* The built-in ChatML template ("chatml"). */
extern const char llorch_chat_chatml_template[];

/*
 * Compiles template_text (required) and tool_use_text (NULL: none). bos_text
 * and eos_text are what the template sees as bos_token / eos_token (NULL:
 * ""). A syntax error gets LLORCH_EFORMAT with em naming the template and
 * the line.
 */
int llorch_chat_init(llorch_chat **out, const char *template_text, const char *tool_use_text,
                     const char *bos_text, const char *eos_text, llorch_errmsg *em);

/*
 * The template of a model: override NULL uses the GGUF's
 * tokenizer.chat_template (and .tool_use); "chatml" the built-in ChatML;
 * anything else is read as a path to a Jinja file. BOS/EOS texts come from
 * the tokenizer. LLORCH_ENOTFOUND when the model has no template and none
 * is named (em says how to name one); LLORCH_EIO for an unreadable file.
 */
int llorch_chat_init_model(llorch_chat **out, const llorch_gguf *g, const llorch_tokenizer *t,
                           const char *override, llorch_errmsg *em);
void llorch_chat_free(llorch_chat *c);

/* Where the template came from: "gguf", "chatml" or the file path. */
const char *llorch_chat_source(const llorch_chat *c);
bool llorch_chat_has_tool_use(const llorch_chat *c);
/* The template text that teaches the model its tool-call syntax (the
 * tool_use template when there is one): what llorch_tool_format_detect reads. */
const char *llorch_chat_tool_template(const llorch_chat *c);

/*
 * Renders context (a JSON object; see above) with the template, or with the
 * tool_use template when context.tools is a non-empty array and there is
 * one. now: strftime_now's clock (0: the current time). Errors are the
 * template's (LLORCH_EINVAL, em = "TemplateError: ...") or its bounds
 * (LLORCH_ELIMIT).
 */
int llorch_chat_render(const llorch_chat *c, const struct cJSON *context, time_t now, llorch_jinja_output *out,
                       llorch_errmsg *em);

/*
 * Tokenizes a rendered prompt: CONTROL tokens are parsed only in bytes the
 * template wrote (out->from_request marks the others); BOS/EOS are added
 * as the vocabulary says, and a leading BOS text the template wrote itself
 * is dropped so it is not doubled (llama.cpp does the same). Appends to
 * tokens.
 */
int llorch_chat_tokenize(const llorch_tokenizer *t, const llorch_jinja_output *r, llorch_tokens *tokens,
                         llorch_errmsg *em);

#endif /* LLORCH_CHAT_H */
