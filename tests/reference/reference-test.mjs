#!/usr/bin/env node
/*
 * llorch against llama.cpp, token for token (run through run-reference.sh,
 * which installs node-llama-cpp first when needed).
 *
 *   node reference-test.mjs --llorch BIN [--steps 40] [--eps 1e-3] [--threads 2]
 *                           [--only ARCH/TYPE[,ARCH/TYPE...]] [--keep DIR]
 *
 * For each architecture (llama, qwen2, qwen3) and weight type (f16, bf16,
 * q8_0, q4_0, q4_k, q6_k) it synthesizes a small random-weight model with
 * `llorch synth` (the vocabulary rotating between the synth vocabulary and
 * llama.cpp's qwen2 and llama-bpe vocabularies) and checks:
 *   1. the prompt token ids of one text (BOS per the model) are the same;
 *   2. greedy decoding of --steps tokens from llama.cpp's prompt ids gives
 *      the same ids. A difference is allowed only at a step where llama.cpp's
 *      two best logits are within --eps of each other AND llorch chose the
 *      other of those two: that is a tie within float rounding, reported as
 *      such, and the comparison of that model stops there (after a different
 *      token the two continuations are different texts). Any other
 *      difference fails the test.
 */
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import process from "node:process";

import { openLlama, openModel, tokenizeText, greedySteps } from "./llamacpp.mjs";

const ARCHS = ["llama", "qwen2", "qwen3"];
const TYPES = ["f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k"];
const PROMPT = "The quick brown fox jumps over the lazy dog. Hello, world! 12345 + 678 = ?";

/* ---- options ---- */

function parseArgs(argv) {
  const o = { llorch: process.env.LLORCH_BIN, steps: 40, eps: 1e-3, threads: 2, only: null, keep: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i], v = argv[i + 1];
    if (a === "--llorch") o.llorch = v;
    else if (a === "--steps") o.steps = Number(v);
    else if (a === "--eps") o.eps = Number(v);
    else if (a === "--threads") o.threads = Number(v);
    else if (a === "--only") o.only = new Set(v.split(","));
    else if (a === "--keep") o.keep = v;
    else throw new Error(`unknown option '${a}'`);
    i++;
  }
  if (!o.llorch) throw new Error("--llorch BIN (or LLORCH_BIN) is required");
  if (!Number.isInteger(o.steps) || o.steps < 1) throw new Error(`--steps: expected an integer >= 1`);
  if (!(o.eps >= 0)) throw new Error(`--eps: expected a number >= 0`);
  return o;
}

/* ---- llorch side ---- */

function llorch(bin, args) {
  const r = spawnSync(bin, args, { encoding: "utf8", maxBuffer: 64 << 20 });
  if (r.error) throw new Error(`${bin} ${args[0]}: ${r.error.message}`);
  if (r.status !== 0)
    throw new Error(`llorch ${args.join(" ")}: exit ${r.status}: ${(r.stderr || "").trim().split("\n").slice(-3).join(" | ")}`);
  return r.stdout;
}

/* `llorch run --json` lines -> {prompt: [ids], tokens: [ids], gaps: [top-2 logit gap]} */
function parseRunJson(out) {
  const res = { prompt: null, tokens: [], top2: [] };
  for (const line of out.split("\n")) {
    if (!line.trim()) continue;
    const o = JSON.parse(line);
    if (o.prompt) res.prompt = o.prompt;
    else if (o.done) res.done = o;
    else if (o.id >= 0) {
      res.tokens.push(o.id);
      res.top2.push(o.top_logprobs || []);
    }
  }
  return res;
}

/*
 * How close the logits are, where both engines agree on the two best
 * tokens: the largest difference of their top-2 logit gaps (llorch's gap is
 * a difference of log-softmax values, which equals the logit difference).
 */
function gapAgreement(ref, top2, upto) {
  let worst = 0;
  for (let i = 0; i < upto && i < top2.length; i++) {
    const t = top2[i];
    if (t.length < 2 || t[0].id !== ref[i].top[0][0] || t[1].id !== ref[i].top[1][0]) continue;
    const d = Math.abs((t[0].logprob - t[1].logprob) - (ref[i].top[0][1] - ref[i].top[1][1]));
    if (d > worst) worst = d;
  }
  return worst;
}

/* The shapes: small enough for 18 models on 2 cores in a few minutes, and
 * rows of 512/256 so every k-quant block fits. qwen3 gets a head size
 * different from n_embd / n_head, as the real Qwen3 models have. */
function synthArgs(arch, type, vocab, out) {
  const a = ["synth", "--arch", arch, "--layers", "2", "--embd", "256", "--ff", "512",
    "--heads", "4", "--kv-heads", "2", "--type", type, "--seed", "7", "-o", out];
  if (arch === "qwen3") a.push("--head-dim", "128");
  if (vocab) a.push("--vocab-from", vocab);
  return a;
}

/* ---- one model ---- */

async function checkOne(o, llama, arch, type, vocabName, vocabPath, dir) {
  const file = path.join(dir, `${arch}-${type}-${vocabName}.gguf`);
  const label = `${arch}/${type} (vocab ${vocabName})`;
  llorch(o.llorch, synthArgs(arch, type, vocabPath, file));
  const model = await openModel(llama, file);
  try {
    const refPrompt = tokenizeText(model, PROMPT);
    const mine = parseRunJson(llorch(o.llorch, ["run", "--model", file, "--prompt", PROMPT,
      "--max-tokens", "0", "--json", "--threads", String(o.threads)]));
    if (JSON.stringify(mine.prompt) !== JSON.stringify(refPrompt))
      return { label, ok: false, msg: `prompt ids differ:\n    llama.cpp ${refPrompt.join(" ")}\n    llorch    ${(mine.prompt || []).join(" ")}` };

    const ref = await greedySteps(model, refPrompt, o.steps, o.threads);
    const mineGen = parseRunJson(llorch(o.llorch, ["run", "--model", file, "--prompt-ids", refPrompt.join(" "),
      "--temp", "0", "--max-tokens", String(o.steps), "--ignore-eos", "--json", "--logprobs", "2",
      "--threads", String(o.threads)]));
    const gen = mineGen.tokens;
    let minGap = Infinity;
    for (let i = 0; i < ref.length; i++) {
      const [[id1, l1], [id2, l2]] = ref[i].top;
      const gap = l1 - l2;
      if (gap < minGap) minGap = gap;
      if (i >= gen.length)
        return { label, ok: false, msg: `llorch stopped after ${gen.length} tokens, llama.cpp made ${ref.length}` };
      if (gen[i] === ref[i].token) continue;
      const agree = `top-2 gaps agreed within ${gapAgreement(ref, mineGen.top2, i).toExponential(1)} before`;
      const other = gen[i] === id1 || gen[i] === id2;
      if (other && Math.abs(gap) <= o.eps)
        return { label, ok: true, tie: true,
          msg: `${i} steps identical, then a TIE at step ${i}: llama.cpp top-2 ${id1}:${l1.toFixed(6)} ${id2}:${l2.toFixed(6)} (gap ${gap.toExponential(2)}), llama.cpp took ${ref[i].token}, llorch ${gen[i]}; ${agree}; comparison stops there` };
      return { label, ok: false,
        msg: `step ${i}: llama.cpp ${ref[i].token} (top-2 ${id1}:${l1.toFixed(6)} ${id2}:${l2.toFixed(6)}, gap ${gap.toExponential(2)}), llorch ${gen[i]}; ${agree}\n    llama.cpp ${ref.map((s) => s.token).join(" ")}\n    llorch    ${gen.join(" ")}` };
    }
    return { label, ok: true, msg: `prompt ${refPrompt.length} ids equal; ${ref.length}/${ref.length} greedy tokens identical (smallest top-2 gap ${minGap.toExponential(2)}; top-2 gaps agree within ${gapAgreement(ref, mineGen.top2, ref.length).toExponential(1)})` };
  } finally {
    await model.dispose();
    if (!o.keep) fs.rmSync(file, { force: true });
  }
}

/* ---- main ---- */

const o = parseArgs(process.argv.slice(2));
// llama.cpp's vocabularies come from $LLORCH_TESTDATA (scripts/testdata.sh; ctest's testdata fixture).
const testdata = process.env.LLORCH_TESTDATA;
if (!testdata)
  throw new Error("LLORCH_TESTDATA is not set: run through ctest, or `scripts/testdata.sh DIR` and set LLORCH_TESTDATA=DIR");
const vocabs = [
  ["synth", null],
  ["qwen2", path.join(testdata, "tokenizer/ggml-vocab-qwen2.gguf")],
  ["llama-bpe", path.join(testdata, "tokenizer/ggml-vocab-llama-bpe.gguf")],
];
for (const [name, p] of vocabs)
  if (p && !fs.existsSync(p)) throw new Error(`vocabulary ${name}: ${p} not found (run scripts/testdata.sh ${testdata})`);

const dir = o.keep || fs.mkdtempSync(path.join(os.tmpdir(), "llorch-ref-"));
fs.mkdirSync(dir, { recursive: true });
const llama = await openLlama();
const results = [];
for (const [ai, arch] of ARCHS.entries()) {
  for (const [ti, type] of TYPES.entries()) {
    if (o.only && !o.only.has(`${arch}/${type}`)) continue;
    const [vname, vpath] = vocabs[(ai + ti) % vocabs.length];
    const t0 = Date.now();
    let r;
    try {
      r = await checkOne(o, llama, arch, type, vname, vpath, dir);
    } catch (e) {
      r = { label: `${arch}/${type} (vocab ${vname})`, ok: false, msg: e.message };
    }
    r.secs = ((Date.now() - t0) / 1000).toFixed(1);
    results.push(r);
    console.log(`${r.ok ? (r.tie ? "TIE " : "ok  ") : "FAIL"} ${r.label} [${r.secs}s]: ${r.msg}`);
  }
}
await llama.dispose();
if (!o.keep) fs.rmSync(dir, { recursive: true, force: true });
const failed = results.filter((r) => !r.ok);
console.log(`\n${results.length - failed.length}/${results.length} token-exact with llama.cpp ` +
  `(${results.filter((r) => r.tie).length} stopped at a tie)` + (failed.length ? `; FAILED: ${failed.map((r) => r.label).join(", ")}` : ""));
process.exit(failed.length ? 1 : 0);
