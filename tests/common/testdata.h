/*
 * Where tests find the data that comes from packages rather than from this
 * repository: $LLORCH_TESTDATA, which ctest sets to <build>/testdata after its
 * `testdata` fixture has run scripts/testdata.sh (llama.cpp's tokenizer
 * vocabularies and expected ids, from the npm package node-llama-cpp).
 *
 * A test run without it stops with a message saying how to provide it: a
 * missing file must fail loudly, never skip.
 */
#ifndef LLORCH_TESTS_TESTDATA_H
#define LLORCH_TESTS_TESTDATA_H

#include <stdio.h>
#include <stdlib.h>

/* buf <- "$LLORCH_TESTDATA/rel"; returns buf. Exits the test on a missing
 * variable: nothing sensible can be tested without the data. */
static inline const char *testdata_path(char *buf, size_t n, const char *rel) {
  const char *dir = getenv("LLORCH_TESTDATA");
  if (!dir || !*dir) {
    fprintf(stderr,
            "LLORCH_TESTDATA is not set: run this test through ctest (its `testdata` fixture extracts the\n"
            "files), or run `scripts/testdata.sh DIR` (needs `scripts/install-deps.sh --with-npm`) and set\n"
            "LLORCH_TESTDATA=DIR\n");
    exit(1);
  }
  snprintf(buf, n, "%s/%s", dir, rel);
  return buf;
}

#endif
