/*
 * libFuzzer target for the config file reader (src/config): arbitrary bytes
 * as a YAML config over the defaults of every option. Whatever the input,
 * the reader returns 0 or an error with its one line; it never crashes,
 * leaks or reads out of bounds. A file it accepts must also dump, and the
 * dump must read back.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  llorch_config cfg;
  llorch_errmsg em = {{0}};
  if (llorch_config_init(&cfg, LLORCH_ROLE_NONE) != 0) return 0;
  int err = llorch_config_load_string(&cfg, "fuzz.yaml", (const char *)data, size, &em);
  if (err != 0) {
    /* Every failure explains itself in one line. */
    if (em.text[0] == '\0' || strchr(em.text, '\n')) abort();
  } else {
    char *dump = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&dump, &len);
    if (f) {
      llorch_config_dump(&cfg, f, LLORCH_CONFIG_DUMP_SECRETS);
      fclose(f);
      llorch_config back;
      if (llorch_config_init(&back, LLORCH_ROLE_NONE) == 0) {
        if (llorch_config_load_string(&back, "dump.yaml", dump, len, &em) != 0) abort();
        llorch_config_free(&back);
      }
      free(dump);
    }
  }
  llorch_config_free(&cfg);
  return 0;
}
