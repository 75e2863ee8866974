#!/usr/bin/env node
/*
 * Differential check helper: tokenizes every string of a vectors file (the
 * shared .inp format: strings separated by "\n__ggml_vocab_test__\n") with
 * llama.cpp, through the prebuilt binaries node-llama-cpp ships (see
 * tests/reference/llamacpp.mjs), and writes one line of ids per string:
 * plain text, nothing added -- the .out format. With --special, special-token
 * text is parsed.
 *
 *   node llamacpp_tokenize.mjs MODEL.gguf IN.inp OUT.out [--special]
 */
import fs from "node:fs";
import { openLlama, openModel } from "../../reference/llamacpp.mjs";

const [model_path, inp, out, flag] = process.argv.slice(2);
if (!model_path || !inp || !out) {
  console.error("usage: llamacpp_tokenize.mjs MODEL IN.inp OUT.out [--special]");
  process.exit(2);
}
const sep = "\n__ggml_vocab_test__\n";
let parts = fs.readFileSync(inp, "utf8").split(sep);
if (parts.length && parts[parts.length - 1] === "") parts.pop();
const llama = await openLlama();
const model = await openModel(llama, model_path, true);
const lines = parts.map((t) => " " + Array.from(model.tokenize(t, flag === "--special")).join(" "));
fs.writeFileSync(out, lines.join("\n") + "\n");
await model.dispose();
await llama.dispose();
