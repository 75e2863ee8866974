/*
 * Tool subcommands of the llorch executable (`llorch <name> ...`). Each
 * returns the process exit status: 0 ok, 1 failure, 2 usage error.
 */
#ifndef LLORCH_COMMANDS_H
#define LLORCH_COMMANDS_H

/* `llorch config --check FILE | --dump [--config FILE] [--role R] [flags]`
 * (src/tools/config_cmd.c). argv[0] is "config". */
int llorch_cmd_config(int argc, char **argv);

/* `llorch synth --preset NAME | --arch A --layers N ... -o OUT.gguf`: writes a
 * random-weight model of a real shape (src/tools/synth.c). argv[0] is "synth". */
int llorch_cmd_synth(int argc, char **argv);

/* `llorch tokenize --model FILE [--text T | --file F] [--special] [--bos] [--verbose]`:
 * prints the token ids of a text (src/tools/tokenize.c). argv[0] is "tokenize". */
int llorch_cmd_tokenize(int argc, char **argv);

/* `llorch run --model FILE --prompt TEXT [--chat] [--json] ...`: generates a
 * continuation and streams it to stdout (src/tools/run.c). argv[0] is "run". */
int llorch_cmd_run(int argc, char **argv);

/* `llorch bench --model FILE [--threads N] [--prompt-tokens N] [--gen-tokens N]
 * [--batch N] [--json]`: load time, prompt-processing and generation tok/s and
 * RSS of one model (src/tools/bench.c). argv[0] is "bench". */
int llorch_cmd_bench(int argc, char **argv);

/* `llorch chat-template (--template FILE.jinja | --model FILE.gguf) --request FILE.json
 * [--bos-token T] [--eos-token T] [--now TIME]`: prints a chat request rendered with a Jinja
 * chat template, exactly (src/tools/chat_template.c). argv[0] is "chat-template". */
int llorch_cmd_chat_template(int argc, char **argv);

#endif /* LLORCH_COMMANDS_H */
