#!/usr/bin/env node
/*
 * llorch against llama.cpp, token for token (run through run-reference.sh,
 * which installs node-llama-cpp first when needed).
 *
 *   node reference-test.mjs --llorch BIN [--models N] [--seed S] [--prompts K]
 *        [--steps 24] [--eps 2e-3] [--threads 2] [--no-matrix] [--only ARCH/TYPE,...]
 *        [--keep DIR]
 *
 * Two sets of small random-weight models synthesized with `llorch synth`:
 *   - the matrix: each architecture (llama, qwen2, qwen3) x weight type
 *     (f16, bf16, q8_0, q4_0, q4_k, q6_k) in one fixed shape; three of them
 *     carry a real vocabulary (qwen2, llama-bpe, llama-spm), whose prompt
 *     token ids must equal llama.cpp's;
 *   - a property test: --models N models of random shape (1-3 layers, embd
 *     64-512, head dims 16-128, GQA ratios 1-4, random vocabulary sizes,
 *     tied or separate output), type and seed, drawn from --seed, with
 *     --prompts K prompts each.
 *
 * For every model and prompt, greedy decoding of --steps tokens from
 * llama.cpp's prompt ids must give the same ids, except at a near-tie: a
 * step where llama.cpp's two best logits are within --eps and llorch chose
 * the other of the two ends that comparison (after a different token the two
 * continuations are different texts).
 *
 * llama.cpp ships CPU variants whose reductions differ (its AVX-512 ones
 * sum over 16 lanes, its AVX2 ones over 8, and so on), and on these random
 * models the variants disagree with each other well beyond a near-tie. When
 * the variant ggml picks on this machine is an AVX-512 one (S), the test also
 * runs llama.cpp's AVX2 variant (A) in a child process with the AVX-512
 * libraries hidden from its loader, and a model passes when llorch is
 * token-identical to S, or when it is token-identical to A and differs from
 * S no more than A itself does (diverges no earlier, top-2 gaps no further
 * apart): llorch's distance from the variant selected here must not exceed
 * llama.cpp's own variant-to-variant distance. Every line says which
 * variant llorch matched and the largest top-2 gap difference seen.
 */
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import process from "node:process";

import { openLlama, openModel, tokenizeText, greedySteps, makeAvx2Mirror, greedyChild } from "./llamacpp.mjs";

const ARCHS = ["llama", "qwen2", "qwen3"];
const TYPES = ["f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k"];
const PROMPTS = [
  "The quick brown fox jumps over the lazy dog. Hello, world! 12345 + 678 = ?",
  "Once upon a time, in a land far away, there lived a small robot named Tik.",
  "def add(a, b):\n    return a + b  # sums two numbers",
  "Ärger, naïve café; 東京 is big. 3.14159 ≈ π!",
];

/* ---- options ---- */

function parseArgs(argv) {
  const o = { llorch: process.env.LLORCH_BIN, steps: 24, eps: 2e-3, threads: 2, only: null, keep: null,
    models: 16, seed: 1, prompts: 2, matrix: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i], v = argv[i + 1];
    if (a === "--no-matrix") { o.matrix = false; continue; }
    if (a === "--llorch") o.llorch = v;
    else if (a === "--steps") o.steps = Number(v);
    else if (a === "--eps") o.eps = Number(v);
    else if (a === "--threads") o.threads = Number(v);
    else if (a === "--models") o.models = Number(v);
    else if (a === "--seed") o.seed = Number(v);
    else if (a === "--prompts") o.prompts = Number(v);
    else if (a === "--only") o.only = new Set(v.split(","));
    else if (a === "--keep") o.keep = v;
    else throw new Error(`unknown option '${a}'`);
    i++;
  }
  if (!o.llorch) throw new Error("--llorch BIN (or LLORCH_BIN) is required");
  for (const k of ["steps", "threads", "prompts"])
    if (!Number.isInteger(o[k]) || o[k] < 1) throw new Error(`--${k}: expected an integer >= 1, got ${o[k]}`);
  if (!Number.isInteger(o.models) || o.models < 0) throw new Error(`--models: expected an integer >= 0, got ${o.models}`);
  if (!Number.isInteger(o.seed)) throw new Error(`--seed: expected an integer, got ${o.seed}`);
  if (o.prompts > PROMPTS.length) throw new Error(`--prompts: at most ${PROMPTS.length}`);
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

/* `llorch run --json` lines -> {prompt: [ids], steps: [{token, top: [[id, logprob] x2]}]} */
function parseRunJson(out) {
  const res = { prompt: null, steps: [] };
  for (const line of out.split("\n")) {
    if (!line.trim()) continue;
    const o = JSON.parse(line);
    if (o.prompt) res.prompt = o.prompt;
    else if (o.done) res.done = o;
    else if (o.id >= 0) res.steps.push({ token: o.id, top: (o.top_logprobs || []).map((t) => [t.id, t.logprob]) });
  }
  return res;
}

/* ---- comparing two greedy runs ---- */

/*
 * run against ref (both [{token, top: [[id, v], [id, v]]}]; top-2 values are
 * logits or log-probabilities: their difference is the same). Returns
 * {steps: identical steps before the end, end: "same"|"tie"|"diverge",
 * gap: llama.cpp's top-2 gap at the divergence, gapDiff: the largest
 * difference of the two top-2 gaps over the steps where both agree on the
 * two best tokens}.
 */
function compareRuns(ref, run, eps) {
  let gapDiff = 0;
  for (let i = 0; i < ref.length; i++) {
    if (i >= run.length) return { steps: i, end: "short", gap: NaN, gapDiff };
    const [[id1, l1], [id2, l2]] = ref[i].top;
    const t = run[i].top;
    if (t.length >= 2 && t[0][0] === id1 && t[1][0] === id2)
      gapDiff = Math.max(gapDiff, Math.abs((t[0][1] - t[1][1]) - (l1 - l2)));
    if (run[i].token === ref[i].token) continue;
    const other = run[i].token === id1 || run[i].token === id2;
    return { steps: i, end: other && Math.abs(l1 - l2) <= eps ? "tie" : "diverge", gap: l1 - l2, gapDiff };
  }
  return { steps: ref.length, end: "same", gap: NaN, gapDiff };
}

const passes = (c) => c.end === "same" || c.end === "tie";

function describe(c, n) {
  if (c.end === "same") return `${n}/${n} identical, top-2 gaps within ${c.gapDiff.toExponential(1)}`;
  if (c.end === "tie") return `${c.steps} identical then a tie (gap ${c.gap.toExponential(2)}), gaps within ${c.gapDiff.toExponential(1)}`;
  if (c.end === "short") return `stopped after ${c.steps} of ${n} tokens`;
  return `DIVERGES at step ${c.steps} (llama.cpp gap ${c.gap.toExponential(2)}), gaps within ${c.gapDiff.toExponential(1)} before`;
}

/* llorch's distance from the selected variant against llama.cpp's AVX2
 * variant's: it may not diverge where that one does not, nor earlier, nor
 * have top-2 gaps further apart (beyond a near-tie's width). */
function noWorse(mine, theirs) {
  if (passes(theirs) && !passes(mine)) return false;
  if (mine.end === "diverge" && theirs.end === "diverge" && mine.steps < theirs.steps) return false;
  return mine.gapDiff <= theirs.gapDiff + 1e-3;
}

/* ---- the models ---- */

/* mulberry32: a small seeded generator, so a failing draw can be rerun */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const pick = (r, a) => a[Math.floor(r() * a.length)];

/* The fixed matrix: rows of 512/256 so every k-quant block fits; qwen3 gets
 * a head size different from n_embd / n_head, as the real Qwen3 models have. */
function matrixModels(vocabs) {
  const out = [];
  for (const [ai, arch] of ARCHS.entries())
    for (const [ti, type] of TYPES.entries()) {
      const k = ai * TYPES.length + ti;
      const vocab = k % 6 === 1 ? vocabs[(k / 6) | 0] : null; /* 3 real vocabularies */
      const a = ["--arch", arch, "--layers", "2", "--embd", "256", "--ff", "512", "--heads", "4",
        "--kv-heads", "2", "--type", type, "--seed", "7"];
      if (arch === "qwen3") a.push("--head-dim", "128");
      if (vocab) a.push("--vocab-from", vocab[1]);
      out.push({ label: `${arch}/${type} (vocab ${vocab ? vocab[0] : "synth"})`, key: `${arch}/${type}`, args: a,
        prompts: [PROMPTS[0]], steps: vocab ? 12 : null });
    }
  return out;
}

/* One random model: shapes every kernel path must handle (k-quant rows of
 * 256, Q8_0/Q4_0 rows of 32, head dims 16-128, vocabularies whose size is not
 * a multiple of 8 so llama.cpp leaves the output matrix unrepacked). */
function randomModel(r, idx, nPrompts) {
  const arch = pick(r, ARCHS);
  const type = pick(r, ["f32", ...TYPES]);
  const blk = type.endsWith("_k") ? 256 : type.startsWith("q") ? 32 : 16;
  const embd = pick(r, [64, 96, 128, 192, 256, 384, 512].filter((e) => e % blk === 0));
  const ff = pick(r, [96, 128, 256, 320, 512, 768].filter((e) => e % blk === 0));
  const layers = 1 + Math.floor(r() * 3);
  let heads, hd;
  if (arch === "qwen3") {
    hd = pick(r, [16, 32, 64, 128]);
    heads = pick(r, [1, 2, 4, 8].filter((h) => (h * hd) % blk === 0));
    if (!heads) { hd = 128; heads = 2; }
  } else {
    heads = pick(r, [1, 2, 3, 4, 6, 8].filter((h) => embd % h === 0 && embd / h >= 16 && embd / h <= 128 && (embd / h) % 2 === 0));
    hd = embd / heads;
  }
  const kv = pick(r, [1, 2, 4].filter((g) => heads % g === 0).map((g) => heads / g));
  const vocab = pick(r, [300, 517, 1000, 2048, 4099]);
  const seed = 1 + Math.floor(r() * 1e6);
  const a = ["--arch", arch, "--layers", String(layers), "--embd", String(embd), "--ff", String(ff),
    "--heads", String(heads), "--kv-heads", String(kv), "--type", type, "--seed", String(seed),
    "--vocab", String(vocab)];
  if (arch === "qwen3") a.push("--head-dim", String(hd));
  const tied = r() < 0.3;
  if (tied) a.push("--tie-embeddings");
  const first = Math.floor(r() * PROMPTS.length);
  const prompts = Array.from({ length: nPrompts }, (_, i) => PROMPTS[(first + i) % PROMPTS.length]);
  return { label: `#${idx} ${arch}/${type} L${layers} e${embd} ff${ff} h${heads}/${kv}x${hd} v${vocab}${tied ? " tied" : ""} seed ${seed}`,
    key: `${arch}/${type}`, args: a, prompts, steps: null };
}

/* ---- one model ---- */

async function checkOne(o, llama, avx2, m, dir) {
  const file = path.join(dir, `m${Math.random().toString(36).slice(2)}.gguf`);
  llorch(o.llorch, ["synth", ...m.args, "-o", file]);
  const model = await openModel(llama, file);
  const steps = m.steps || o.steps;
  const lines = [];
  let ok = true, worstGap = 0;
  try {
    for (const [pi, text] of m.prompts.entries()) {
      const refPrompt = tokenizeText(model, text);
      const mine0 = parseRunJson(llorch(o.llorch, ["run", "--model", file, "--prompt", text,
        "--max-tokens", "0", "--json", "--threads", String(o.threads)]));
      if (JSON.stringify(mine0.prompt) !== JSON.stringify(refPrompt)) {
        ok = false;
        lines.push(`prompt ${pi}: ids differ:\n      llama.cpp ${refPrompt.join(" ")}\n      llorch    ${(mine0.prompt || []).join(" ")}`);
        continue;
      }
      const sel = await greedySteps(model, refPrompt, steps, o.threads);
      const mine = parseRunJson(llorch(o.llorch, ["run", "--model", file, "--prompt-ids", refPrompt.join(" "),
        "--temp", "0", "--max-tokens", String(steps), "--ignore-eos", "--json", "--logprobs", "2",
        "--threads", String(o.threads)])).steps;
      const vsSel = compareRuns(sel, mine, o.eps);
      worstGap = Math.max(worstGap, vsSel.gapDiff);
      let verdict, pass;
      if (passes(vsSel) || !avx2) {
        pass = passes(vsSel);
        verdict = `llorch vs llama.cpp: ${describe(vsSel, steps)}`;
      } else {
        /* llama.cpp's AVX2 variant: the reference llorch must then equal, and
         * the measure of what "no further from S than llama.cpp itself" means */
        const alt = greedyChild(avx2, file, refPrompt, steps, o.threads);
        const altVsSel = compareRuns(sel, alt, o.eps);
        const vsAlt = compareRuns(alt, mine, o.eps);
        pass = passes(vsAlt) && noWorse(vsSel, altVsSel);
        verdict = `llorch vs selected variant: ${describe(vsSel, steps)}; llama.cpp AVX2 vs selected: ` +
          `${describe(altVsSel, steps)}; llorch vs llama.cpp AVX2: ${describe(vsAlt, steps)}`;
      }
      if (!pass) {
        ok = false;
        verdict += `\n      llama.cpp ${sel.map((s) => s.token).join(" ")}\n      llorch    ${mine.map((s) => s.token).join(" ")}`;
      }
      lines.push(`prompt ${pi} (${refPrompt.length} ids): ${pass ? "" : "FAIL "}${verdict}`);
    }
  } finally {
    await model.dispose();
    if (!o.keep) fs.rmSync(file, { force: true });
  }
  return { ok, worstGap, msg: lines.join("\n    ") };
}

/* ---- main ---- */

const o = parseArgs(process.argv.slice(2));
// llama.cpp's vocabularies come from $LLORCH_TESTDATA (scripts/testdata.sh; ctest's testdata fixture).
const testdata = process.env.LLORCH_TESTDATA;
if (!testdata)
  throw new Error("LLORCH_TESTDATA is not set: run through ctest, or `scripts/testdata.sh DIR` and set LLORCH_TESTDATA=DIR");
const vocabs = [
  ["qwen2", path.join(testdata, "tokenizer/ggml-vocab-qwen2.gguf")],
  ["llama-bpe", path.join(testdata, "tokenizer/ggml-vocab-llama-bpe.gguf")],
  ["llama-spm", path.join(testdata, "tokenizer/ggml-vocab-llama-spm.gguf")],
];
if (o.matrix)
  for (const [name, p] of vocabs)
    if (!fs.existsSync(p)) throw new Error(`vocabulary ${name}: ${p} not found (run scripts/testdata.sh ${testdata}, or --no-matrix)`);

const dir = o.keep || fs.mkdtempSync(path.join(os.tmpdir(), "llorch-ref-"));
fs.mkdirSync(dir, { recursive: true });
const llama = await openLlama();
const avx512 = /AVX512 = 1/.test(llama.systemInfo);
const avx2 = avx512 ? makeAvx2Mirror(fs.mkdtempSync(path.join(os.tmpdir(), "llorch-ref-avx2-"))) : null;
console.log(`llama.cpp ${llama.llamaCppRelease.release}, selected CPU variant: ${llama.systemInfo.trim()}`);
console.log(avx512 ? `an AVX-512 variant: llama.cpp's AVX2 variant is the second reference (${path.dirname(avx2)})`
  : "not an AVX-512 variant: llorch must match it directly");

const models = [];
if (o.matrix) models.push(...matrixModels(vocabs));
const r = rng(o.seed);
for (let i = 0; i < o.models; i++) models.push(randomModel(r, i, o.prompts));

const results = [];
for (const m of models) {
  if (o.only && !o.only.has(m.key)) continue;
  const t0 = Date.now();
  let res;
  try {
    res = await checkOne(o, llama, avx2, m, dir);
  } catch (e) {
    res = { ok: false, worstGap: NaN, msg: e.message };
  }
  res.label = m.label;
  results.push(res);
  console.log(`${res.ok ? "ok  " : "FAIL"} ${m.label} [${((Date.now() - t0) / 1000).toFixed(1)}s]:\n    ${res.msg}`);
}
await llama.dispose();
if (!o.keep) fs.rmSync(dir, { recursive: true, force: true });
if (avx2) fs.rmSync(path.dirname(avx2), { recursive: true, force: true });
const failed = results.filter((x) => !x.ok);
const worst = Math.max(0, ...results.map((x) => x.worstGap).filter((x) => !Number.isNaN(x)));
console.log(`\n${results.length - failed.length}/${results.length} models pass against llama.cpp; largest top-2 gap ` +
  `difference from the selected variant ${worst.toExponential(2)}` +
  (failed.length ? `; FAILED: ${failed.map((x) => x.label).join(", ")}` : ""));
process.exit(failed.length ? 1 : 0);
