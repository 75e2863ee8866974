/*
 * Internals of src/grammar: the compiled byte-level rules (gbnf.c builds
 * them) and the matcher's caches (matcher.c).
 */
#ifndef LLORCH_GRAMMAR_IMPL_H
#define LLORCH_GRAMMAR_IMPL_H

#include <stdbool.h>
#include <stdint.h>

#include "llorch/grammar.h"

/* One element of an alternative. Alternatives are runs of elements in
 * grammar.elems ended by GEL_END. */
typedef enum gel_kind {
  GEL_END = 0,   /* end of the alternative */
  GEL_BYTES = 1, /* one byte from the set sets[arg] */
  GEL_REF = 2,   /* the rule arg */
} gel_kind;

typedef struct gel {
  uint32_t kind : 2;
  uint32_t arg : 30;
} gel;

typedef struct gbyteset {
  uint32_t w[8]; /* bit b of w[b / 32]: byte b is in the set */
} gbyteset;

static inline bool gbyteset_has(const gbyteset *s, uint8_t b) { return (s->w[b >> 5] >> (b & 31)) & 1u; }

/* The state id no transition leads out of. */
#define GRAMMAR_DEAD (-1)
/* A transition not computed yet. */
#define GRAMMAR_UNKNOWN (-2)

/* An interned stack: top position pos (an element index), the rest parent
 * (another node, or -1 for the empty rest). */
typedef struct gnode {
  uint32_t pos;
  int32_t parent;
  int32_t next_off; /* BYTES-topped nodes: the stacks after consuming the byte, in pool; -1 = not yet */
  uint32_t next_len;
  bool next_accept; /* consuming the byte may complete the sentence */
} gnode;

/* A DFA state: a sorted set of BYTES-topped stacks, and whether the
 * sentence may end here. */
typedef struct gstate {
  uint32_t off, len;  /* stacks in state_pool */
  bool accept;
  int32_t *trans;     /* (256) next state per byte, GRAMMAR_UNKNOWN / GRAMMAR_DEAD; NULL until used */
  uint32_t *mask;     /* cached token mask for the vocabulary bound to the grammar, or NULL */
  uint32_t mask_count;
} gstate;

/* A growable array of uint32. */
typedef struct gvec {
  uint32_t *v;
  uint32_t n, cap;
} gvec;

/* Appends x (capacity doubles from 16); LLORCH_ENOMEM on failure. */
int gvec_push(gvec *v, uint32_t x);

struct llorch_grammar {
  int refs;
  llorch_grammar_limits lim;

  /* ---- the rules (immutable after compile) ---- */
  gel *elems;            /* (n_elems) alternatives' elements */
  uint32_t n_elems;
  uint32_t *alt_start;   /* (n_alts) first element of each alternative */
  uint32_t n_alts;
  uint32_t *rule_alts;   /* (n_rules + 1) alternatives of rule r: alt_start[rule_alts[r] .. rule_alts[r + 1]) */
  uint32_t n_rules;
  gbyteset *sets;        /* (n_sets) byte sets */
  uint32_t n_sets;
  uint32_t root;         /* the start rule */

  /* ---- matcher caches (matcher.c) ---- */
  gnode *nodes;
  uint32_t n_nodes, cap_nodes;
  int32_t *node_hash;    /* (node_hash_cap) open addressing, -1 empty */
  uint32_t node_hash_cap;
  uint32_t *node_mark;   /* (cap_nodes) epoch stamps for de-duplication */
  uint32_t epoch;
  gvec next_pool;        /* nodes' next lists */
  gstate *states;
  uint32_t n_states, cap_states;
  int32_t *state_hash;
  uint32_t state_hash_cap;
  gvec state_pool;       /* states' stack lists */
  gvec scratch;          /* an expansion's stacks */
  gvec uni;              /* a transition's stacks */
  uint32_t depth;        /* expansion recursion depth (bounded) */
  int32_t start;         /* the initial state */
  const llorch_grammar_vocab *vocab; /* the vocabulary masks are cached for */
  uint32_t n_masks;
  uint64_t n_mask_walks, n_mask_hits;
  int32_t *walk_states;  /* (vocab's max depth + 1) trie walk stack */
  uint32_t walk_cap;
};

/* Keeps an error message on one line: control characters quoted from the
 * input (a newline inside a literal, a key with a tab) become '?'. */
void grammar_errmsg_oneline(llorch_errmsg *em);

/* gbnf.c: the grammar's rules from GBNF text (matcher caches empty). */
int grammar_compile_gbnf(llorch_grammar *g, const char *text, size_t len, llorch_errmsg *em);

/* matcher.c: sets up the caches and the start state after compile. */
int grammar_matcher_init(llorch_grammar *g, llorch_errmsg *em);
void grammar_matcher_free(llorch_grammar *g);
/* The state after byte b from state st (GRAMMAR_DEAD when none). Negative
 * LLORCH_E* codes below GRAMMAR_UNKNOWN are never returned: a failure
 * (limit, memory) returns INT32_MIN and sets em. */
int32_t grammar_step(llorch_grammar *g, int32_t st, uint8_t b, llorch_errmsg *em);
#define GRAMMAR_STEP_FAILED INT32_MIN

#endif /* LLORCH_GRAMMAR_IMPL_H */
