#!/usr/bin/env node
/*
 * llama.cpp as a reference for llorch, through the prebuilt CPU binaries that
 * node-llama-cpp 3.22.1 ships (@node-llama-cpp/linux-x64). Nothing is built
 * or downloaded: getLlama() is called with build "never", skipDownload and
 * gpu false, and NODE_LLAMA_CPP_SKIP_DOWNLOAD is set for install scripts.
 *
 *   node llamacpp.mjs info     MODEL
 *   node llamacpp.mjs tokenize MODEL TEXT          -> ids on one line (BOS per the model)
 *   node llamacpp.mjs greedy   MODEL N ID [ID...]  -> one line per step:
 *        "step token top1_id top1_logit top2_id top2_logit"
 *     greedy decoding of N tokens from the prompt ids (EOS does not stop it);
 *     the top-2 raw logits show near-ties where a different implementation
 *     may pick the other.
 *   node llamacpp.mjs embed    MODEL TEXT [TEXT...] -> JSON {inputs: [{tokens, vector}]}
 *     llama.cpp's embedding of each text through node-llama-cpp's embedding
 *     context (llama_get_embeddings_seq with the pooling the file's
 *     <arch>.pooling_type says; without one, the last token's hidden state).
 *     Tokens as node-llama-cpp feeds them (plain text, BOS/EOS as the vocab
 *     says); vectors as llama.cpp returns them (not normalised).
 *   node llamacpp.mjs bench    MODEL [--threads N] [--pp 512] [--tg 128] [--reps 1]
 *     llama-bench style: pp = one prompt of N tokens in batches of 512
 *     (n_batch = n_ubatch = 512), tg = N single-token decode steps from an
 *     empty context, both with logits for the last position; prints JSON
 *     {pp_tps, tg_tps, ...} with the median over --reps.
 */
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import process from "node:process";
import { fileURLToPath, pathToFileURL } from "node:url";

process.env.NODE_LLAMA_CPP_SKIP_DOWNLOAD = "true";
const { getLlama, LlamaLogLevel } = await import("node-llama-cpp");

function usage(msg) {
  if (msg) console.error(`llamacpp.mjs: ${msg}`);
  console.error("usage: llamacpp.mjs info|tokenize|greedy|embed|bench MODEL ...");
  process.exit(2);
}

function parseIntArg(name, s) {
  const v = Number(s);
  if (!Number.isInteger(v) || v < 0) usage(`${name}: expected a non-negative integer, got '${s}'`);
  return v;
}

export async function openLlama() {
  return getLlama({
    gpu: false,
    build: "never",
    skipDownload: true,
    usePrebuiltBinaries: true,
    progressLogs: false,
    logLevel: LlamaLogLevel.error,
    // maxThreads 0: the context's `threads` is taken as is, never lowered.
    maxThreads: 0,
  });
}

/* Contexts default to flash attention off (node-llama-cpp's default, "auto",
 * turns it on for CPU, whose F16 attention sums differently); the greedy
 * contexts say so themselves, the embedding context cannot. */
export async function openModel(llama, path, vocabOnly = false) {
  return llama.loadModel({ modelPath: path, gpuLayers: 0, vocabOnly, useMmap: true,
    defaultContextFlashAttention: false });
}

/*
 * llama.cpp's AVX2 CPU variant on a machine where it would pick an AVX-512
 * one: ggml loads the best libggml-cpu-*.so in the folder of the prebuilt
 * binaries, so a mirror of node_modules whose binaries folder is a copy
 * without the AVX-512 variants makes it fall back (to alderlake with
 * AVX-VNNI, else haswell). The rest of node_modules is linked, and node runs
 * with --preserve-symlinks so the mirror's copy is the one resolved. Returns
 * the path of this script inside the mirror (run it with mirrorNodeArgs).
 */
const AVX512_VARIANTS = ["zen4", "skylakex", "cannonlake", "cascadelake", "icelake", "cooperlake", "sapphirerapids"];
export const mirrorNodeArgs = ["--preserve-symlinks", "--preserve-symlinks-main"];

export function makeAvx2Mirror(dir) {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const nm = path.join(here, "node_modules");
  const out = path.join(dir, "node_modules");
  fs.mkdirSync(path.join(out, "@node-llama-cpp"), { recursive: true });
  for (const e of fs.readdirSync(nm))
    if (e !== "@node-llama-cpp") fs.symlinkSync(fs.realpathSync(path.join(nm, e)), path.join(out, e));
  const scope = path.join(nm, "@node-llama-cpp");
  for (const e of fs.readdirSync(scope))
    fs.cpSync(fs.realpathSync(path.join(scope, e)), path.join(out, "@node-llama-cpp", e), { recursive: true });
  let removed = 0;
  for (const f of fs.readdirSync(out, { recursive: true })) {
    const m = /libggml-cpu-([a-z0-9]+)\.so$/.exec(f);
    if (m && AVX512_VARIANTS.includes(m[1])) {
      fs.rmSync(path.join(out, f));
      removed++;
    }
  }
  if (!removed) throw new Error(`no AVX-512 variant library found under ${out}`);
  fs.copyFileSync(fileURLToPath(import.meta.url), path.join(dir, "llamacpp.mjs"));
  return path.join(dir, "llamacpp.mjs");
}

/* greedySteps through `node SCRIPT greedy` in a child process (a mirror). */
export function greedyChild(script, file, prompt, n, threads) {
  const r = spawnSync(process.execPath, [...mirrorNodeArgs, script, "greedy", file, String(n), prompt.join(" "),
    "--threads", String(threads)], { encoding: "utf8", maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`llama.cpp (AVX2 variant): exit ${r.status}: ${(r.stderr || "").trim().split("\n").slice(-3).join(" | ")}`);
  return r.stdout.trim().split("\n").map((l) => {
    const f = l.split(" ");
    return { token: Number(f[1]), top: [[Number(f[2]), Number(f[3])], [Number(f[4]), Number(f[5])]] };
  });
}

/* embedTexts through `node SCRIPT embed` in a child process (a mirror). */
export function embedChild(script, file, texts, threads) {
  const r = spawnSync(process.execPath, [...mirrorNodeArgs, script, "embed", file, ...texts,
    "--threads", String(threads)], { encoding: "utf8", maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`llama.cpp (AVX2 variant): exit ${r.status}: ${(r.stderr || "").trim().split("\n").slice(-3).join(" | ")}`);
  return JSON.parse(r.stdout);
}

/* ---- commands ---- */

async function cmdInfo(path) {
  const llama = await openLlama();
  const model = await openModel(llama, path, true);
  console.log(JSON.stringify({
    gpu: llama.gpu,
    buildType: llama.buildType,
    cpuMathCores: llama.cpuMathCores,
    systemInfo: llama.systemInfo,
    llamaCppRelease: llama.llamaCppRelease,
    bos: model.tokens.bos,
    eos: model.tokens.eos,
    shouldPrependBos: model.tokens.shouldPrependBosToken,
  }, null, 1));
  await model.dispose();
  await llama.dispose();
}

/* Plain text (special-token text not parsed), BOS when the model says so. */
export function tokenizeText(model, text) {
  const ids = model.tokenize(text, false);
  if (model.tokens.shouldPrependBosToken && model.tokens.bos != null) ids.unshift(model.tokens.bos);
  return ids;
}

async function cmdTokenize(path, text) {
  const llama = await openLlama();
  const model = await openModel(llama, path, true);
  console.log(tokenizeText(model, text).join(" "));
  await model.dispose();
  await llama.dispose();
}

/*
 * Greedy decoding of n tokens after prompt (ids) on an open model; EOS/EOT do
 * not stop it (the comparison wants n steps). Returns one {token, top:
 * [[id, logit], [id, logit]]} per step.
 */
export async function greedySteps(model, prompt, n, threads) {
  const ctx = await model.createContext({
    contextSize: Math.max(256, prompt.length + n + 8),
    batchSize: 512,
    threads,
    sequences: 1,
    flashAttention: false,
  });
  const seq = ctx.getSequence();
  const steps = [];
  const want = { logits: { filter: { tokens: [], includeTop: 2 } }, token: true, options: { temperature: 0 } };
  let input = prompt.map((t, i) => (i === prompt.length - 1 ? [t, { generateNext: want }] : t));
  for (let step = 0; step < n; step++) {
    const res = await seq.controlledEvaluate(input);
    const next = res[input.length - 1]?.next;
    if (!next || next.token == null || !next.logits) throw new Error(`step ${step}: no result from llama.cpp`);
    const top = [...next.logits.entries()].slice(0, 2);
    if (top.length < 2) top.push([-1, -Infinity]);
    steps.push({ token: next.token, top });
    input = [[next.token, { generateNext: want }]];
  }
  await ctx.dispose();
  return steps;
}

async function cmdGreedy(path, n, prompt, threads) {
  const llama = await openLlama();
  const model = await openModel(llama, path);
  const steps = await greedySteps(model, prompt, n, threads);
  steps.forEach((s, i) => console.log(`${i} ${s.token} ${s.top[0][0]} ${s.top[0][1]} ${s.top[1][0]} ${s.top[1][1]}`));
  await model.dispose();
  await llama.dispose();
}

/*
 * llama.cpp's embeddings of texts on an open model: node-llama-cpp's
 * embedding context (a context with embeddings on; pooling from the model
 * file). Returns {inputs: [{tokens, vector}]} (tokens: the text's count
 * before BOS/EOS).
 */
export async function embedTexts(model, texts, threads) {
  const ctx = await model.createEmbeddingContext({ contextSize: 512, batchSize: 512, threads });
  const inputs = [];
  for (const text of texts) {
    const tokens = model.tokenize(text, false);
    const e = await ctx.getEmbeddingFor(text);
    inputs.push({ tokens: tokens.length, vector: [...e.vector] });
  }
  await ctx.dispose();
  return { inputs };
}

async function cmdEmbed(path, texts, threads) {
  const llama = await openLlama();
  const model = await openModel(llama, path);
  console.log(JSON.stringify(await embedTexts(model, texts, threads)));
  await model.dispose();
  await llama.dispose();
}

async function cmdBench(path, threads, pp, tg, reps) {
  const llama = await openLlama();
  const t0 = performance.now();
  const model = await openModel(llama, path);
  const loadMs = performance.now() - t0;
  const ctx = await model.createContext({
    contextSize: pp + tg + 16,
    batchSize: 512,
    threads,
    sequences: 1,
    flashAttention: false,
  });
  const seq = ctx.getSequence();
  // Prompt of ordinary tokens of this vocabulary; which ones does not matter for speed.
  const text = "The quick brown fox jumps over the lazy dog while 42 zebras count stars. ";
  const base = model.tokenize(text.repeat(8), false);
  const prompt = Array.from({ length: pp }, (_, i) => base[i % base.length]);
  const ppT = [], tgT = [];
  // Every step asks for the next token (greedy), so the output layer runs for
  // the last position as in llama-bench (evaluateWithoutGeneratingNewTokens
  // would skip it and flatter llama.cpp). Greedy sampling over the vocabulary
  // costs well under 1% of a decode step.
  const next = { generateNext: { token: true, options: { temperature: 0 } } };
  const withLast = (ids) => ids.map((t, i) => (i === ids.length - 1 ? [t, next] : t));
  // Warm-up (llama-bench does one too): pages the weights in.
  await seq.controlledEvaluate(withLast(prompt.slice(0, 16)));
  await seq.clearHistory();
  for (let r = 0; r < reps; r++) {
    if (pp > 0) {
      const a = performance.now();
      await seq.controlledEvaluate(withLast(prompt));
      ppT.push(performance.now() - a);
      await seq.clearHistory();
    }
    if (tg > 0) {
      // As llama-bench's tg: from an empty context, tg single-token steps.
      let tok = prompt[0];
      const a = performance.now();
      for (let i = 0; i < tg; i++) {
        const res = await seq.controlledEvaluate([[tok, next]]);
        tok = res[0]?.next?.token ?? prompt[(i + 1) % prompt.length];
      }
      tgT.push(performance.now() - a);
      await seq.clearHistory();
    }
  }
  const med = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)]; };
  console.log(JSON.stringify({
    engine: "llama.cpp",
    release: llama.llamaCppRelease,
    threads,
    load_ms: +loadMs.toFixed(1),
    pp_tokens: pp,
    tg_tokens: tg,
    pp_tps: pp > 0 ? +(pp / (med(ppT) / 1000)).toFixed(2) : null,
    tg_tps: tg > 0 ? +(tg / (med(tgT) / 1000)).toFixed(2) : null,
  }));
  await ctx.dispose();
  await model.dispose();
  await llama.dispose();
}

/* ---- main (when run as a script) ---- */

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [cmd, path, ...rest] = process.argv.slice(2);
  if (!cmd || !path) usage();
  let threads = 2;
  const ti = rest.indexOf("--threads");
  if (ti >= 0) { threads = parseIntArg("--threads", rest[ti + 1]); rest.splice(ti, 2); }
  try {
    if (cmd === "info") await cmdInfo(path);
    else if (cmd === "tokenize") {
      if (rest.length !== 1) usage("tokenize: expected MODEL TEXT");
      await cmdTokenize(path, rest[0]);
    } else if (cmd === "greedy") {
      if (rest.length < 2) usage("greedy: expected MODEL N ID [ID...]");
      const n = parseIntArg("N", rest[0]);
      const ids = rest.slice(1).flatMap((s) => s.trim().split(/\s+/)).map((s) => parseIntArg("token id", s));
      await cmdGreedy(path, n, ids, threads);
    } else if (cmd === "embed") {
      if (rest.length < 1) usage("embed: expected MODEL TEXT [TEXT...]");
      await cmdEmbed(path, rest, threads);
    } else if (cmd === "bench") {
      const opt = (name, def) => {
        const i = rest.indexOf(name);
        return i >= 0 ? parseIntArg(name, rest[i + 1]) : def;
      };
      await cmdBench(path, threads, opt("--pp", 512), opt("--tg", 128), Math.max(1, opt("--reps", 1)));
    } else usage(`unknown command '${cmd}'`);
  } catch (e) {
    console.error(`llamacpp.mjs: ${e && e.message ? e.message : e}`);
    process.exit(1);
  }
}
