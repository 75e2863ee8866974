/*
 * llorch: one binary, three roles (orchestrator, pool, worker) and a few
 * tools. main() only parses the first word and dispatches once, as nginx's
 * process roles share one entry point.
 */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "--version") == 0) {
    printf("llorch %s\n", LLORCH_VERSION);
    return 0;
  }
  fprintf(stderr, "usage: llorch --role=orchestrator|pool|worker [--config FILE] [flags]\n");
  return 2;
}
