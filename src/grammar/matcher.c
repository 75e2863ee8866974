/*
 * The matcher: interned stacks, lazily built DFA states, the vocabulary
 * trie and token masks (see include/llorch/grammar.h for the idea).
 *
 * A stack is a chain of positions: the top is the element to match next
 * (always a byte set once expanded), the rest are where to continue when
 * the current rule ends. Stacks are interned as (pos, parent) nodes, so
 * two stacks are equal exactly when their ids are, and the stacks reached
 * after a node's byte set matched ("next") are computed once per node.
 * A DFA state is a sorted set of node ids; its transition on byte b is the
 * union of next(n) over the nodes whose set holds b, interned in turn.
 */
#include <stdlib.h>
#include <string.h>

#include "grammar-impl.h"

/* Rule references expanded inside one another before the matcher gives up
 * (a grammar of 5000 nested single-reference rules is not useful). */
#define GRAMMAR_MAX_EXPAND_DEPTH 4096
/* Memory for cached token masks per grammar; all are dropped when full. */
#define GRAMMAR_MASK_CACHE_BYTES (16u << 20)

void llorch_grammar_limits_default(llorch_grammar_limits *lim) {
  lim->max_text_bytes = 1u << 20;
  lim->max_rules = 100000;
  lim->max_states = 16384;
}

/* ---- interned stacks ---- */

static uint32_t mx_node_hash(uint32_t pos, int32_t parent) {
  uint64_t x = ((uint64_t)pos << 32) ^ (uint32_t)parent;
  x *= 0x9E3779B97F4A7C15ull;
  return (uint32_t)(x >> 32);
}

static int mx_node_intern(llorch_grammar *g, uint32_t pos, int32_t parent, int32_t *out,
                          llorch_errmsg *em) {
  if (g->n_nodes * 2 >= g->node_hash_cap) {
    uint32_t cap = g->node_hash_cap ? g->node_hash_cap * 2 : 1024;
    int32_t *h = malloc((size_t)cap * sizeof *h);
    if (!h) return llorch_errmsg_set(em, LLORCH_ENOMEM, "grammar matcher: out of memory");
    for (uint32_t i = 0; i < cap; i++) h[i] = -1;
    for (uint32_t i = 0; i < g->n_nodes; i++) {
      uint32_t k = mx_node_hash(g->nodes[i].pos, g->nodes[i].parent) & (cap - 1);
      while (h[k] >= 0) k = (k + 1) & (cap - 1);
      h[k] = (int32_t)i;
    }
    free(g->node_hash);
    g->node_hash = h;
    g->node_hash_cap = cap;
  }
  uint32_t k = mx_node_hash(pos, parent) & (g->node_hash_cap - 1);
  while (g->node_hash[k] >= 0) {
    const gnode *n = &g->nodes[g->node_hash[k]];
    if (n->pos == pos && n->parent == parent) {
      *out = g->node_hash[k];
      return 0;
    }
    k = (k + 1) & (g->node_hash_cap - 1);
  }
  if (g->n_nodes >= g->lim.max_states * 16u)
    return llorch_errmsg_set(em, LLORCH_ELIMIT,
                             "the grammar needs more than %u matcher stacks (nesting too deep "
                             "for the configured limit)", g->lim.max_states * 16u);
  if (g->n_nodes == g->cap_nodes) {
    uint32_t cap = g->cap_nodes ? g->cap_nodes * 2 : 1024;
    gnode *nn = realloc(g->nodes, (size_t)cap * sizeof *nn);
    if (!nn) return llorch_errmsg_set(em, LLORCH_ENOMEM, "grammar matcher: out of memory");
    g->nodes = nn;
    uint32_t *nm = realloc(g->node_mark, (size_t)cap * sizeof *nm);
    if (!nm) return llorch_errmsg_set(em, LLORCH_ENOMEM, "grammar matcher: out of memory");
    memset(nm + g->cap_nodes, 0, (size_t)(cap - g->cap_nodes) * sizeof *nm);
    g->node_mark = nm;
    g->cap_nodes = cap;
  }
  g->nodes[g->n_nodes] = (gnode){pos, parent, -1, 0, false};
  g->node_hash[k] = (int32_t)g->n_nodes;
  *out = (int32_t)g->n_nodes++;
  return 0;
}

/*
 * Adds to g->scratch every byte-topped stack reachable from the stack
 * (pos, parent) without consuming input: a rule reference is replaced by
 * each of its alternatives (with the position after it pushed, unless that
 * is the end of the alternative: a tail call), the end of an alternative
 * returns to the parent. *accept is set when the whole stack can empty.
 * Nodes already visited in this expansion (g->epoch) are skipped, which
 * also ends cycles through rules that match the empty string.
 */
static int mx_expand(llorch_grammar *g, uint32_t pos, int32_t parent, bool *accept,
                     llorch_errmsg *em) {
  gel e = g->elems[pos];
  if (e.kind == GEL_END) {
    if (parent < 0) {
      *accept = true;
      return 0;
    }
    return mx_expand(g, g->nodes[parent].pos, g->nodes[parent].parent, accept, em);
  }
  int32_t id;
  int rc = mx_node_intern(g, pos, parent, &id, em);
  if (rc < 0) return rc;
  if (g->node_mark[id] == g->epoch) return 0;
  g->node_mark[id] = g->epoch;
  if (e.kind == GEL_BYTES) {
    if (gvec_push(&g->scratch, (uint32_t)id) < 0)
      return llorch_errmsg_set(em, LLORCH_ENOMEM, "grammar matcher: out of memory");
    return 0;
  }
  if (++g->depth > GRAMMAR_MAX_EXPAND_DEPTH) {
    g->depth--;
    return llorch_errmsg_set(em, LLORCH_ELIMIT,
                             "the grammar nests more than %d rule references before a "
                             "character", GRAMMAR_MAX_EXPAND_DEPTH);
  }
  int32_t cont = parent;
  if (g->elems[pos + 1].kind != GEL_END) rc = mx_node_intern(g, pos + 1, parent, &cont, em);
  for (uint32_t a = g->rule_alts[e.arg]; rc == 0 && a < g->rule_alts[e.arg + 1]; a++)
    rc = mx_expand(g, g->alt_start[a], cont, accept, em);
  g->depth--;
  return rc;
}

/* Computes next(node): the stacks after its byte set matched. */
static int mx_node_next(llorch_grammar *g, int32_t id, llorch_errmsg *em) {
  g->epoch++;
  g->scratch.n = 0;
  bool accept = false;
  int rc = mx_expand(g, g->nodes[id].pos + 1, g->nodes[id].parent, &accept, em);
  if (rc < 0) return rc;
  gnode *n = &g->nodes[id];
  n->next_off = (int32_t)g->next_pool.n;
  n->next_len = g->scratch.n;
  n->next_accept = accept;
  for (uint32_t i = 0; i < g->scratch.n; i++)
    if (gvec_push(&g->next_pool, g->scratch.v[i]) < 0)
      return llorch_errmsg_set(em, LLORCH_ENOMEM, "grammar matcher: out of memory");
  return 0;
}

/* ---- DFA states ---- */

static uint32_t mx_state_hash(const uint32_t *ids, uint32_t n, bool accept) {
  uint32_t h = 2166136261u ^ (uint32_t)accept;
  for (uint32_t i = 0; i < n; i++) h = (h ^ ids[i]) * 16777619u;
  return h;
}

static int mx_u32_cmp(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

/* The state of the sorted set ids[0..n) with accept, created when new. */
static int mx_state_intern(llorch_grammar *g, const uint32_t *ids, uint32_t n, bool accept,
                           int32_t *out, llorch_errmsg *em) {
  if (g->n_states * 2 >= g->state_hash_cap) {
    uint32_t cap = g->state_hash_cap ? g->state_hash_cap * 2 : 256;
    int32_t *h = malloc((size_t)cap * sizeof *h);
    if (!h) return llorch_errmsg_set(em, LLORCH_ENOMEM, "grammar matcher: out of memory");
    for (uint32_t i = 0; i < cap; i++) h[i] = -1;
    for (uint32_t i = 0; i < g->n_states; i++) {
      const gstate *s = &g->states[i];
      uint32_t k = mx_state_hash(g->state_pool.v + s->off, s->len, s->accept) & (cap - 1);
      while (h[k] >= 0) k = (k + 1) & (cap - 1);
      h[k] = (int32_t)i;
    }
    free(g->state_hash);
    g->state_hash = h;
    g->state_hash_cap = cap;
  }
  uint32_t k = mx_state_hash(ids, n, accept) & (g->state_hash_cap - 1);
  while (g->state_hash[k] >= 0) {
    const gstate *s = &g->states[g->state_hash[k]];
    if (s->len == n && s->accept == accept &&
        (n == 0 || memcmp(g->state_pool.v + s->off, ids, (size_t)n * sizeof *ids) == 0)) {
      *out = g->state_hash[k];
      return 0;
    }
    k = (k + 1) & (g->state_hash_cap - 1);
  }
  if (g->n_states >= g->lim.max_states)
    return llorch_errmsg_set(em, LLORCH_ELIMIT,
                             "the grammar reached its limit of %u matcher states (output "
                             "nested too deeply for the configured limit)", g->lim.max_states);
  if (g->n_states == g->cap_states) {
    uint32_t cap = g->cap_states ? g->cap_states * 2 : 64;
    gstate *ns = realloc(g->states, (size_t)cap * sizeof *ns);
    if (!ns) return llorch_errmsg_set(em, LLORCH_ENOMEM, "grammar matcher: out of memory");
    g->states = ns;
    g->cap_states = cap;
  }
  uint32_t off = g->state_pool.n;
  for (uint32_t i = 0; i < n; i++)
    if (gvec_push(&g->state_pool, ids[i]) < 0)
      return llorch_errmsg_set(em, LLORCH_ENOMEM, "grammar matcher: out of memory");
  g->states[g->n_states] = (gstate){off, n, accept, NULL, NULL, 0};
  g->state_hash[k] = (int32_t)g->n_states;
  *out = (int32_t)g->n_states++;
  return 0;
}

int32_t grammar_step(llorch_grammar *g, int32_t st, uint8_t b, llorch_errmsg *em) {
  gstate *s = &g->states[st];
  if (!s->trans) {
    s->trans = malloc(256 * sizeof *s->trans);
    if (!s->trans) {
      llorch_errmsg_set(em, LLORCH_ENOMEM, "grammar matcher: out of memory");
      return GRAMMAR_STEP_FAILED;
    }
    for (int i = 0; i < 256; i++) s->trans[i] = GRAMMAR_UNKNOWN;
  }
  if (s->trans[b] != GRAMMAR_UNKNOWN) return s->trans[b];
  /* next lists first: computing one uses the epoch the union needs */
  for (uint32_t i = 0; i < g->states[st].len; i++) {
    uint32_t id = g->state_pool.v[g->states[st].off + i];
    if (!gbyteset_has(&g->sets[g->elems[g->nodes[id].pos].arg], b)) continue;
    if (g->nodes[id].next_off < 0 && mx_node_next(g, (int32_t)id, em) < 0)
      return GRAMMAR_STEP_FAILED;
  }
  g->epoch++;
  g->uni.n = 0;
  bool accept = false;
  for (uint32_t i = 0; i < g->states[st].len; i++) {
    uint32_t id = g->state_pool.v[g->states[st].off + i];
    const gnode *n = &g->nodes[id];
    if (!gbyteset_has(&g->sets[g->elems[n->pos].arg], b)) continue;
    accept |= n->next_accept;
    for (uint32_t k = 0; k < n->next_len; k++) {
      uint32_t m = g->next_pool.v[(uint32_t)n->next_off + k];
      if (g->node_mark[m] == g->epoch) continue;
      g->node_mark[m] = g->epoch;
      if (gvec_push(&g->uni, m) < 0) {
        llorch_errmsg_set(em, LLORCH_ENOMEM, "grammar matcher: out of memory");
        return GRAMMAR_STEP_FAILED;
      }
    }
  }
  int32_t t = GRAMMAR_DEAD;
  if (g->uni.n || accept) {
    if (g->uni.n > 1) qsort(g->uni.v, g->uni.n, sizeof *g->uni.v, mx_u32_cmp);
    if (mx_state_intern(g, g->uni.v, g->uni.n, accept, &t, em) < 0) return GRAMMAR_STEP_FAILED;
  }
  g->states[st].trans[b] = t;
  return t;
}

int grammar_matcher_init(llorch_grammar *g, llorch_errmsg *em) {
  g->epoch = 1;
  g->scratch.n = 0;
  bool accept = false;
  for (uint32_t a = g->rule_alts[g->root]; a < g->rule_alts[g->root + 1]; a++) {
    int rc = mx_expand(g, g->alt_start[a], -1, &accept, em);
    if (rc < 0) return rc;
  }
  if (g->scratch.n > 1) qsort(g->scratch.v, g->scratch.n, sizeof *g->scratch.v, mx_u32_cmp);
  return mx_state_intern(g, g->scratch.v, g->scratch.n, accept, &g->start, em);
}

static void mx_masks_drop(llorch_grammar *g) {
  for (uint32_t i = 0; i < g->n_states; i++) {
    free(g->states[i].mask);
    g->states[i].mask = NULL;
  }
  g->n_masks = 0;
}

void grammar_matcher_free(llorch_grammar *g) {
  for (uint32_t i = 0; i < g->n_states; i++) {
    free(g->states[i].trans);
    free(g->states[i].mask);
  }
  free(g->states);
  free(g->state_hash);
  free(g->state_pool.v);
  free(g->nodes);
  free(g->node_hash);
  free(g->node_mark);
  free(g->next_pool.v);
  free(g->scratch.v);
  free(g->uni.v);
  free(g->walk_states);
}

/* ---- grammar objects ---- */

void grammar_errmsg_oneline(llorch_errmsg *em) {
  if (em) llorch_str_oneline(em->text);
}

static int grammar_new(llorch_grammar **out, const llorch_grammar_limits *lim, llorch_errmsg *em) {
  llorch_grammar *g = calloc(1, sizeof *g);
  if (!g) return llorch_errmsg_set(em, LLORCH_ENOMEM, "grammar: out of memory");
  g->refs = 1;
  if (lim) g->lim = *lim;
  else llorch_grammar_limits_default(&g->lim);
  *out = g;
  return 0;
}

int llorch_grammar_from_gbnf(llorch_grammar **out, const char *text, size_t len,
                             const llorch_grammar_limits *lim, llorch_errmsg *em) {
  *out = NULL;
  llorch_grammar *g = NULL;
  int rc = grammar_new(&g, lim, em);
  if (rc < 0) return rc;
  if ((rc = grammar_compile_gbnf(g, text, len, em)) < 0 || (rc = grammar_matcher_init(g, em)) < 0) {
    grammar_errmsg_oneline(em);
    llorch_grammar_free(g);
    return rc;
  }
  *out = g;
  return 0;
}

llorch_grammar *llorch_grammar_ref(llorch_grammar *g) {
  g->refs++;
  return g;
}

void llorch_grammar_free(llorch_grammar *g) {
  if (!g || --g->refs > 0) return;
  grammar_matcher_free(g);
  free(g->elems);
  free(g->alt_start);
  free(g->rule_alts);
  free(g->sets);
  free(g);
}

void llorch_grammar_stats_get(const llorch_grammar *g, llorch_grammar_stats *out) {
  out->n_rules = g->n_rules;
  out->n_stacks = g->n_nodes;
  out->n_states = g->n_states;
  out->n_masks = g->n_masks;
  out->n_mask_walks = g->n_mask_walks;
  out->n_mask_hits = g->n_mask_hits;
}

int llorch_grammar_match(llorch_grammar *g, const char *text, size_t len, bool *complete,
                         bool *prefix, llorch_errmsg *em) {
  int32_t st = g->start;
  *complete = false;
  if (prefix) *prefix = false;
  for (size_t i = 0; i < len; i++) {
    st = grammar_step(g, st, (uint8_t)text[i], em);
    if (st == GRAMMAR_STEP_FAILED) return LLORCH_ELIMIT;
    if (st == GRAMMAR_DEAD) return 0;
  }
  if (prefix) *prefix = true;
  *complete = g->states[st].accept;
  return 0;
}

/* ---- the vocabulary trie ---- */

/* One trie node, packed: the mask walk reads one cache line per few nodes. */
typedef struct mx_tnode {
  uint32_t end;      /* first node after this node's subtree */
  uint32_t tok_off;  /* tokens ending here: sorted[tok_off .. tok_off + tok_n) */
  uint16_t tok_n;
  uint16_t depth;    /* 1 for children of the root */
  uint8_t byte;      /* the byte leading into the node */
} mx_tnode;

struct llorch_grammar_vocab {
  uint32_t n_vocab;
  char *text;           /* every token's bytes, concatenated */
  uint32_t *text_off;   /* (n_vocab + 1) token i is text[text_off[i] .. text_off[i + 1]) */
  bool *eog_flag;       /* (n_vocab) */
  int32_t *eog;         /* (n_eog) end-of-generation ids */
  uint32_t n_eog;
  /* trie nodes in depth-first order; node i's subtree is [i, node[i].end) */
  uint32_t n_nodes;
  mx_tnode *node;       /* (n_nodes) */
  int32_t *sorted;      /* token ids with non-empty text, by text */
  uint32_t max_depth;
};

/* Tokens longer than this are never allowed (the trie walk keeps a state per byte). */
#define GRAMMAR_MAX_TOKEN_BYTES 1024

static const llorch_grammar_vocab *mx_sort_vocab;

static int mx_tok_cmp(const void *a, const void *b) {
  const llorch_grammar_vocab *v = mx_sort_vocab;
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  uint32_t lx = v->text_off[x + 1] - v->text_off[x], ly = v->text_off[y + 1] - v->text_off[y];
  int c = memcmp(v->text + v->text_off[x], v->text + v->text_off[y], lx < ly ? lx : ly);
  if (c) return c;
  if (lx != ly) return lx < ly ? -1 : 1;
  return x < y ? -1 : x > y;
}

void llorch_grammar_vocab_free(llorch_grammar_vocab *v) {
  if (!v) return;
  free(v->text);
  free(v->text_off);
  free(v->eog_flag);
  free(v->eog);
  free(v->node);
  free(v->sorted);
  free(v);
}

uint32_t llorch_grammar_vocab_size(const llorch_grammar_vocab *v) { return v->n_vocab; }

/* Builds the trie from v->text/text_off/eog_flag. */
static int mx_vocab_build(llorch_grammar_vocab *v, llorch_errmsg *em) {
  uint32_t n = v->n_vocab, n_sorted = 0, n_eog = 0;
  size_t total = 0;
  for (uint32_t i = 0; i < n; i++) {
    uint32_t len = v->text_off[i + 1] - v->text_off[i];
    if (v->eog_flag[i]) n_eog++;
    else if (len > 0 && len <= GRAMMAR_MAX_TOKEN_BYTES) {
      n_sorted++;
      total += len;
    }
  }
  v->sorted = malloc(((size_t)n_sorted + 1) * sizeof *v->sorted);
  v->eog = malloc(((size_t)n_eog + 1) * sizeof *v->eog);
  /* at most one node per byte of text */
  size_t cap = total + 1;
  v->node = calloc(cap, sizeof *v->node);
  uint32_t *open = malloc((GRAMMAR_MAX_TOKEN_BYTES + 1) * sizeof *open);
  if (!v->sorted || !v->eog || !v->node || !open) {
    free(open);
    return llorch_errmsg_set(em, LLORCH_ENOMEM, "grammar vocabulary: out of memory");
  }
  for (uint32_t i = 0, s = 0, e = 0; i < n; i++) {
    uint32_t len = v->text_off[i + 1] - v->text_off[i];
    if (v->eog_flag[i]) v->eog[e++] = (int32_t)i;
    else if (len > 0 && len <= GRAMMAR_MAX_TOKEN_BYTES) v->sorted[s++] = (int32_t)i;
  }
  v->n_eog = n_eog;
  /* qsort has no context argument in C11: one vocabulary is sorted at a
   * time (vocabularies are built at model load, one thread). */
  mx_sort_vocab = v;
  qsort(v->sorted, n_sorted, sizeof *v->sorted, mx_tok_cmp);
  mx_sort_vocab = NULL;

  uint32_t nn = 0, n_open = 0; /* open[d - 1]: the node at depth d on the current path */
  const char *prev = NULL;
  uint32_t prev_len = 0;
  for (uint32_t k = 0; k < n_sorted; k++) {
    int32_t id = v->sorted[k];
    const char *t = v->text + v->text_off[id];
    uint32_t len = v->text_off[id + 1] - v->text_off[id];
    uint32_t lcp = 0;
    while (prev && lcp < len && lcp < prev_len && t[lcp] == prev[lcp]) lcp++;
    /* close the nodes deeper than the common prefix */
    while (n_open > lcp) v->node[open[--n_open]].end = nn;
    for (uint32_t d = lcp; d < len; d++) {
      v->node[nn] = (mx_tnode){0, 0, 0, (uint16_t)(d + 1), (uint8_t)t[d]};
      open[n_open++] = nn;
      nn++;
    }
    mx_tnode *node = &v->node[open[len - 1]];
    if (node->tok_n == UINT16_MAX) continue; /* that many tokens with one text: keep the first */
    if (node->tok_n == 0) node->tok_off = k;
    node->tok_n++;
    if (len > v->max_depth) v->max_depth = len;
    prev = t;
    prev_len = len;
  }
  while (n_open > 0) v->node[open[--n_open]].end = nn;
  v->n_nodes = nn;
  free(open);
  return 0;
}

static int mx_vocab_alloc(llorch_grammar_vocab **out, uint32_t n_vocab, size_t text_bytes,
                          llorch_errmsg *em) {
  llorch_grammar_vocab *v = calloc(1, sizeof *v);
  if (!v) return llorch_errmsg_set(em, LLORCH_ENOMEM, "grammar vocabulary: out of memory");
  v->n_vocab = n_vocab;
  v->text = malloc(text_bytes + 1);
  v->text_off = malloc(((size_t)n_vocab + 1) * sizeof *v->text_off);
  v->eog_flag = calloc((size_t)n_vocab + 1, sizeof *v->eog_flag);
  if (!v->text || !v->text_off || !v->eog_flag) {
    llorch_grammar_vocab_free(v);
    return llorch_errmsg_set(em, LLORCH_ENOMEM, "grammar vocabulary: out of memory");
  }
  *out = v;
  return 0;
}

int llorch_grammar_vocab_init_texts(llorch_grammar_vocab **out, const char *const *texts,
                                    const size_t *lens, const bool *eog, uint32_t n_vocab,
                                    llorch_errmsg *em) {
  *out = NULL;
  size_t total = 0;
  for (uint32_t i = 0; i < n_vocab; i++) total += lens[i];
  if (total > UINT32_MAX / 2)
    return llorch_errmsg_set(em, LLORCH_ELIMIT, "grammar vocabulary: %zu bytes of token text",
                             total);
  llorch_grammar_vocab *v;
  int rc = mx_vocab_alloc(&v, n_vocab, total, em);
  if (rc < 0) return rc;
  uint32_t off = 0;
  for (uint32_t i = 0; i < n_vocab; i++) {
    v->text_off[i] = off;
    if (lens[i]) memcpy(v->text + off, texts[i], lens[i]);
    off += (uint32_t)lens[i];
    v->eog_flag[i] = eog && eog[i];
  }
  v->text_off[n_vocab] = off;
  if ((rc = mx_vocab_build(v, em)) < 0) {
    llorch_grammar_vocab_free(v);
    return rc;
  }
  *out = v;
  return 0;
}

int llorch_grammar_vocab_init(llorch_grammar_vocab **out, const llorch_tokenizer *t,
                              llorch_errmsg *em) {
  *out = NULL;
  int32_t n = llorch_tokenizer_n_vocab(t);
  if (n <= 0) return llorch_errmsg_set(em, LLORCH_EINVAL, "grammar vocabulary: no tokens");
  /* two passes over the pieces: sizes, then bytes */
  size_t total = 0;
  char buf[256];
  for (int32_t i = 0; i < n; i++) {
    int len = llorch_token_piece(t, i, 0, buf, sizeof buf);
    if (len < 0) return llorch_errmsg_set(em, len, "grammar vocabulary: token %d", (int)i);
    total += (size_t)len;
  }
  llorch_grammar_vocab *v;
  int rc = mx_vocab_alloc(&v, (uint32_t)n, total, em);
  if (rc < 0) return rc;
  uint32_t off = 0;
  for (int32_t i = 0; i < n; i++) {
    v->text_off[i] = off;
    int len = llorch_token_piece(t, i, 0, v->text + off, total - off + 1);
    off += (uint32_t)len;
    v->eog_flag[i] = llorch_tokenizer_is_eog(t, i);
  }
  v->text_off[n] = off;
  if ((rc = mx_vocab_build(v, em)) < 0) {
    llorch_grammar_vocab_free(v);
    return rc;
  }
  *out = v;
  return 0;
}

/* ---- per-sequence state ---- */

struct llorch_grammar_state {
  llorch_grammar *g;
  const llorch_grammar_vocab *v;
  int32_t st;  /* the DFA state */
  bool ended;  /* an end-of-generation token was accepted */
};

int llorch_grammar_state_init(llorch_grammar_state **out, llorch_grammar *g,
                              const llorch_grammar_vocab *v, llorch_errmsg *em) {
  *out = NULL;
  llorch_grammar_state *s = calloc(1, sizeof *s);
  if (!s) return llorch_errmsg_set(em, LLORCH_ENOMEM, "grammar state: out of memory");
  if (g->vocab != v) {
    /* masks cached for another vocabulary mean nothing for this one */
    mx_masks_drop(g);
    g->vocab = v;
  }
  if (g->walk_cap < v->max_depth + 1) {
    int32_t *w = realloc(g->walk_states, ((size_t)v->max_depth + 1) * sizeof *w);
    if (!w) {
      free(s);
      return llorch_errmsg_set(em, LLORCH_ENOMEM, "grammar state: out of memory");
    }
    g->walk_states = w;
    g->walk_cap = v->max_depth + 1;
  }
  s->g = llorch_grammar_ref(g);
  s->v = v;
  s->st = g->start;
  *out = s;
  return 0;
}

void llorch_grammar_state_free(llorch_grammar_state *s) {
  if (!s) return;
  llorch_grammar_free(s->g);
  free(s);
}

/* The trie walk: every token whose bytes lead from st to a live state. */
static int mx_mask_walk(llorch_grammar *g, const llorch_grammar_vocab *v, int32_t st,
                        uint32_t *mask, uint32_t *count, llorch_errmsg *em) {
  uint32_t words = (v->n_vocab + 31) / 32, c = 0;
  memset(mask, 0, (size_t)words * sizeof *mask);
  int32_t *ws = g->walk_states;
  ws[0] = st;
  const mx_tnode *nodes = v->node;
  for (uint32_t i = 0; i < v->n_nodes;) {
    const mx_tnode *n = &nodes[i];
    int32_t from = ws[n->depth - 1];
    const int32_t *tr = g->states[from].trans;
    int32_t t = tr ? tr[n->byte] : GRAMMAR_UNKNOWN;
    if (t == GRAMMAR_UNKNOWN) {
      t = grammar_step(g, from, n->byte, em);
      if (t == GRAMMAR_STEP_FAILED) return LLORCH_ELIMIT;
    }
    if (t == GRAMMAR_DEAD) {
      i = n->end;
      continue;
    }
    ws[n->depth] = t;
    for (uint32_t k = 0; k < n->tok_n; k++) {
      int32_t id = v->sorted[n->tok_off + k];
      mask[id >> 5] |= 1u << (id & 31);
      c++;
    }
    i++;
  }
  if (g->states[st].accept)
    for (uint32_t k = 0; k < v->n_eog; k++) {
      mask[v->eog[k] >> 5] |= 1u << (v->eog[k] & 31);
      c++;
    }
  *count = c;
  return 0;
}

int llorch_grammar_state_mask(llorch_grammar_state *s, uint32_t *mask, llorch_errmsg *em) {
  llorch_grammar *g = s->g;
  const llorch_grammar_vocab *v = s->v;
  size_t bytes = (size_t)((v->n_vocab + 31) / 32) * sizeof *mask;
  if (s->ended) {
    memset(mask, 0, bytes);
    return 0;
  }
  if (g->vocab != v) {
    mx_masks_drop(g);
    g->vocab = v;
  }
  gstate *gs = &g->states[s->st];
  if (gs->mask) {
    memcpy(mask, gs->mask, bytes);
    g->n_mask_hits++;
    return (int)gs->mask_count;
  }
  uint32_t count = 0;
  int rc = mx_mask_walk(g, v, s->st, mask, &count, em);
  if (rc < 0) return rc;
  g->n_mask_walks++;
  /* cache it (best effort: a failed allocation only costs a later walk) */
  if ((uint64_t)(g->n_masks + 1) * bytes > GRAMMAR_MASK_CACHE_BYTES) mx_masks_drop(g);
  uint32_t *copy = malloc(bytes);
  if (copy) {
    memcpy(copy, mask, bytes);
    g->states[s->st].mask = copy;
    g->states[s->st].mask_count = count;
    g->n_masks++;
  }
  return (int)count;
}

int llorch_grammar_state_accept(llorch_grammar_state *s, int32_t id, llorch_errmsg *em) {
  const llorch_grammar_vocab *v = s->v;
  if (id < 0 || (uint32_t)id >= v->n_vocab)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "token %d: outside the vocabulary", (int)id);
  if (s->ended)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "token %d after the end of the output", (int)id);
  if (v->eog_flag[id]) {
    if (!s->g->states[s->st].accept)
      return llorch_errmsg_set(em, LLORCH_EINVAL,
                               "end-of-generation token %d before the output is complete",
                               (int)id);
    s->ended = true;
    return 0;
  }
  uint32_t len = v->text_off[id + 1] - v->text_off[id];
  if (len == 0)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "token %d has no text: not allowed by a grammar",
                             (int)id);
  int32_t st = s->st;
  for (uint32_t i = 0; i < len; i++) {
    st = grammar_step(s->g, st, (uint8_t)v->text[v->text_off[id] + i], em);
    if (st == GRAMMAR_STEP_FAILED) return LLORCH_ELIMIT;
    if (st == GRAMMAR_DEAD)
      return llorch_errmsg_set(em, LLORCH_EINVAL, "token %d is not allowed by the grammar here",
                               (int)id);
  }
  s->st = st;
  return 0;
}

bool llorch_grammar_state_complete(const llorch_grammar_state *s) {
  return s->ended || s->g->states[s->st].accept;
}

bool llorch_grammar_state_finished(const llorch_grammar_state *s) {
  const gstate *gs = &s->g->states[s->st];
  return s->ended || (gs->accept && gs->len == 0);
}
