/*
 * Tool subcommands of the llorch executable (`llorch <name> ...`). Each
 * returns the process exit status: 0 ok, 1 failure, 2 usage error.
 */
#ifndef LLORCH_COMMANDS_H
#define LLORCH_COMMANDS_H

#endif /* LLORCH_COMMANDS_H */
