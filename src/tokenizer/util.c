/*
 * Small pieces the tokenizers share: a string hash map, UTF-8 coding, and
 * GPT-2's byte <-> unicode table.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer-impl.h"

/* ---- hash map ---- */

/* FNV-1a over a then b; the split point is mixed in so ("ab","c") and
 * ("a","bc") hash apart. */
static uint32_t map_hash(const char *a, uint32_t alen, const char *b, uint32_t blen) {
  uint64_t h = 1469598103934665603ULL;
  for (uint32_t i = 0; i < alen; i++) h = (h ^ (uint8_t)a[i]) * 1099511628211ULL;
  h = (h ^ alen) * 1099511628211ULL;
  for (uint32_t i = 0; i < blen; i++) h = (h ^ (uint8_t)b[i]) * 1099511628211ULL;
  return (uint32_t)(h ^ (h >> 32));
}

int tok_map_init(tok_map *m, uint32_t n_expected) {
  uint32_t cap = 16;
  while (cap < n_expected * 2u && cap < (1u << 30)) cap <<= 1;
  m->slots = calloc(cap, sizeof(*m->slots));
  if (!m->slots) return LLORCH_ENOMEM;
  m->cap = cap;
  m->n = 0;
  return 0;
}

void tok_map_free(tok_map *m) {
  free(m->slots);
  m->slots = NULL;
  m->cap = m->n = 0;
}

static bool map_entry_eq(const tok_map_entry *e, uint32_t h, const char *a, uint32_t alen,
                         const char *b, uint32_t blen) {
  return e->hash == h && e->split == alen && e->len == alen + blen &&
         memcmp(e->key, a, alen) == 0 && memcmp(e->key + alen, b, blen) == 0;
}

int tok_map_put(tok_map *m, const char *key, uint32_t len, uint32_t split, int32_t value,
                int32_t *existing) {
  if ((m->n + 1) * 2 > m->cap) {
    /* grow: rehash into a table twice as large */
    tok_map bigger;
    if (tok_map_init(&bigger, m->cap) != 0) return LLORCH_ENOMEM;
    for (uint32_t i = 0; i < m->cap; i++) {
      tok_map_entry *e = &m->slots[i];
      if (!e->key) continue;
      uint32_t j = e->hash & (bigger.cap - 1);
      while (bigger.slots[j].key) j = (j + 1) & (bigger.cap - 1);
      bigger.slots[j] = *e;
      bigger.n++;
    }
    free(m->slots);
    *m = bigger;
  }
  uint32_t h = map_hash(key, split, key + split, len - split);
  uint32_t j = h & (m->cap - 1);
  while (m->slots[j].key) {
    if (map_entry_eq(&m->slots[j], h, key, split, key + split, len - split)) {
      if (existing) *existing = m->slots[j].value;
      return LLORCH_EEXIST;
    }
    j = (j + 1) & (m->cap - 1);
  }
  m->slots[j] = (tok_map_entry){.key = key, .len = len, .split = split, .hash = h, .value = value};
  m->n++;
  return 0;
}

int32_t tok_map_get2(const tok_map *m, const char *a, uint32_t alen, const char *b,
                     uint32_t blen) {
  if (!m->cap) return -1;
  uint32_t h = map_hash(a, alen, b, blen);
  uint32_t j = h & (m->cap - 1);
  while (m->slots[j].key) {
    if (map_entry_eq(&m->slots[j], h, a, alen, b, blen)) return m->slots[j].value;
    j = (j + 1) & (m->cap - 1);
  }
  return -1;
}

/* ---- UTF-8 ---- */

size_t tok_utf8_len(uint8_t lead) {
  static const uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return lookup[lead >> 4];
}

size_t tok_utf8_encode(uint32_t cpt, char *out) {
  if (cpt <= 0x7f) {
    out[0] = (char)cpt;
    return 1;
  }
  if (cpt <= 0x7ff) {
    out[0] = (char)(0xc0 | (cpt >> 6));
    out[1] = (char)(0x80 | (cpt & 0x3f));
    return 2;
  }
  if (cpt <= 0xffff) {
    out[0] = (char)(0xe0 | (cpt >> 12));
    out[1] = (char)(0x80 | ((cpt >> 6) & 0x3f));
    out[2] = (char)(0x80 | (cpt & 0x3f));
    return 3;
  }
  out[0] = (char)(0xf0 | ((cpt >> 18) & 0x07));
  out[1] = (char)(0x80 | ((cpt >> 12) & 0x3f));
  out[2] = (char)(0x80 | ((cpt >> 6) & 0x3f));
  out[3] = (char)(0x80 | (cpt & 0x3f));
  return 4;
}

/*
 * llama.cpp's decoder checks only the lead byte's class and that the
 * continuation bytes are 10xxxxxx: overlong forms and surrogates decode, and
 * any other bad byte becomes one U+FFFD. Being token-exact with llama.cpp on
 * broken input means decoding the same way. Code points above U+10FFFF (which
 * llama.cpp cannot re-encode and throws on) become U+FFFD here.
 */
uint32_t tok_utf8_decode_lenient(const char *s, size_t len, size_t *off) {
  const uint8_t *p = (const uint8_t *)s + *off;
  size_t left = len - *off;
  uint32_t c;
  if (!(p[0] & 0x80)) {
    *off += 1;
    return p[0];
  }
  if (!(p[0] & 0x40)) goto bad;
  if (!(p[0] & 0x20)) {
    if (left < 2 || (p[1] & 0xc0) != 0x80) goto bad;
    *off += 2;
    return ((uint32_t)(p[0] & 0x1f) << 6) | (p[1] & 0x3f);
  }
  if (!(p[0] & 0x10)) {
    if (left < 3 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80) goto bad;
    *off += 3;
    return ((uint32_t)(p[0] & 0x0f) << 12) | ((uint32_t)(p[1] & 0x3f) << 6) | (p[2] & 0x3f);
  }
  if (!(p[0] & 0x08)) {
    if (left < 4 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80)
      goto bad;
    *off += 4;
    c = ((uint32_t)(p[0] & 0x07) << 18) | ((uint32_t)(p[1] & 0x3f) << 12) |
        ((uint32_t)(p[2] & 0x3f) << 6) | (p[3] & 0x3f);
    return c > 0x10ffff ? 0xfffd : c;
  }
bad:
  *off += 1;
  return 0xfffd;
}

/* ---- GPT-2 bytes <-> unicode ---- */

/*
 * GPT-2's byte-level BPE shows every byte as a printable code point: the
 * printable Latin-1 bytes stand for themselves, the other 68 bytes are given
 * U+0100.. in byte order.
 */
static bool byte_is_printable(unsigned b) {
  return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
}

/* Both directions tabulated once; the tables are read-only afterwards. */
static uint16_t byte_cpt[256];      /* byte -> code point */
static int16_t cpt_byte[256 + 68];  /* code point -> byte, -1 for none */
static pthread_once_t byte_tables_once = PTHREAD_ONCE_INIT;

static void byte_tables_build(void) {
  uint32_t n = 0;
  for (unsigned i = 0; i < 256 + 68; i++) cpt_byte[i] = -1;
  for (unsigned b = 0; b < 256; b++) {
    uint32_t c = byte_is_printable(b) ? b : 256 + n++;
    byte_cpt[b] = (uint16_t)c;
    cpt_byte[c] = (int16_t)b;
  }
}

uint32_t tok_byte_to_cpt(uint8_t b) {
  pthread_once(&byte_tables_once, byte_tables_build);
  return byte_cpt[b];
}

int tok_cpt_to_byte(uint32_t cpt) {
  pthread_once(&byte_tables_once, byte_tables_build);
  return cpt < 256 + 68 ? cpt_byte[cpt] : -1;
}
