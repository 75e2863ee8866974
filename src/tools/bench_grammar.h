/*
 * `llorch bench --json-schema FILE` (bench_grammar.c), called by bench.c
 * after the model is loaded.
 */
#ifndef LLORCH_TOOLS_BENCH_GRAMMAR_H
#define LLORCH_TOOLS_BENCH_GRAMMAR_H

#include <stdbool.h>

#include "llorch/error.h"
#include "llorch/model.h"

typedef struct bench_grammar_opts {
  const char *schema_path; /* JSON Schema file */
  const char *model_path;  /* the model (its tokenizer gives the vocabulary) */
  const char *device;
  int threads;
  int gen_tokens;          /* decode steps per run */
  int batch;               /* sequences in the batched runs (<= 1: 8) */
  int reps;
  bool json;
} bench_grammar_opts;

/* Runs and prints the comparison; returns the process exit status. */
int bench_grammar_run(const bench_grammar_opts *o, llorch_model *m, llorch_errmsg *em);

#endif /* LLORCH_TOOLS_BENCH_GRAMMAR_H */
