/*
 * Helpers shared by the OpenAI layer's files (not part of its API).
 */
#ifndef LLORCH_OPENAI_IMPL_H
#define LLORCH_OPENAI_IMPL_H

#include <stddef.h>

#include "llorch/openai.h"

/* 500 "out of memory" into err; returns LLORCH_ENOMEM. */
int openai_oom(llorch_openai_error *err);
/* A client's string for an error message: at most 40 bytes (cut on a UTF-8
 * boundary, "..." added), control characters as '?'. */
const char *openai_show(char *buf, size_t cap, const char *s);
/* Copies src[key] (when present and not null) into dst as dst[as]. 0 or
 * LLORCH_ENOMEM with err. */
int openai_copy_field(cJSON *dst, const cJSON *src, const char *key, const char *as,
                      llorch_openai_error *err);

#endif /* LLORCH_OPENAI_IMPL_H */
