#!/usr/bin/env node
/*
 * echo's prompt logprobs against llama.cpp (node-llama-cpp's prebuilt CPU
 * binaries, as llamacpp.mjs drives them): a synthesized qwen2 model (f32,
 * the built-in 512-token vocabulary), a real worker answering /v2/execute
 * {prompt, echo, logprobs, top_logprobs 3, max_tokens 0}, and llama.cpp
 * evaluating the same token ids with the raw logits of every position. For
 * each prompt position i >= 1, llorch's logprob of token i must equal the
 * log-softmax of llama.cpp's logits at position i-1 for that token, and its
 * 3 alternatives llama.cpp's 3 best, within --eps (1e-3).
 *
 * Then suffix (fill-in-the-middle) on the same shape with `llorch synth
 * --fim`: llama.cpp must find the same FIM tokens (model.tokens.infill), and
 * llorch's greedy tokens for {prompt, suffix} must equal llama.cpp's greedy
 * decoding of [PRE] prefix [SUF] suffix [MID] (the prompt llama.cpp's server
 * builds for /infill; no BOS on this vocabulary), up to a near-tie (top-2
 * logits within --eps where llorch took the other).
 *
 *   node prompt-logprobs-test.mjs --llorch BIN [--eps 1e-3] [--threads 2]
 */
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import process from "node:process";

import { greedySteps, openLlama, openModel } from "./llamacpp.mjs";

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : def;
};
const BIN = opt("--llorch", null);
const EPS = Number(opt("--eps", "1e-3"));
const THREADS = Number(opt("--threads", "2"));
if (!BIN) {
  console.error("usage: prompt-logprobs-test.mjs --llorch BIN [--eps 1e-3] [--threads 2]");
  process.exit(2);
}

const PROMPTS = [
  "The quick brown fox jumps over the lazy dog.",
  "Once upon a time, in a land far away, there lived a small dragon who loved numbers: 1, 2, 3, 42.",
];

function startWorker(model) {
  return new Promise((resolve, reject) => {
    const proc = spawn(BIN, ["--role=worker", "--model", model, "--listen", "127.0.0.1:0", "--log-format", "json",
      "--threads", String(THREADS), "--slots", "1", "--ctx", "512"], { stdio: ["ignore", "pipe", "pipe"] });
    let buf = "";
    const timer = setTimeout(() => { proc.kill("SIGKILL"); reject(new Error("worker did not start in 20 s")); }, 20000);
    proc.on("exit", (code) => reject(new Error(`worker exited with ${code}: ${buf.slice(-2000)}`)));
    const onData = (d) => {
      buf += d;
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(buf);
      if (m) {
        clearTimeout(timer);
        proc.stdout.off("data", onData);
        proc.stderr.off("data", onData);
        proc.stdout.resume();
        proc.stderr.resume();
        resolve({ proc, url: `http://127.0.0.1:${m[1]}` });
      }
    };
    proc.stdout.on("data", onData);
    proc.stderr.on("data", onData);
  });
}

async function waitReady(url) {
  for (let i = 0; i < 200; i++) {
    try {
      if ((await fetch(`${url}/health/ready`)).status === 200) return;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("worker not ready in 20 s");
}

async function llorchPrompt(url, prompt) {
  const r = await fetch(`${url}/v2/execute`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt, echo: true, logprobs: true, top_logprobs: 3, max_tokens: 0 }),
  });
  if (r.status !== 200) throw new Error(`/v2/execute: ${r.status} ${await r.text()}`);
  const text = await r.text();
  for (const block of text.split("\n\n")) {
    if (!/^event: prompt$/m.test(block)) continue;
    const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
    return JSON.parse(data);
  }
  throw new Error(`no prompt event in: ${text.slice(0, 500)}`);
}

function logSoftmax(logits) {
  let max = -Infinity;
  for (const v of logits.values()) if (v > max) max = v;
  let z = 0;
  for (const v of logits.values()) z += Math.exp(v - max);
  const lse = max + Math.log(z);
  return (id) => logits.get(id) - lse;
}

async function llorchFim(url, prompt, suffix, n) {
  const r = await fetch(`${url}/v2/execute`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt, suffix, max_tokens: n, temperature: 0, ignore_eos: true }),
  });
  if (r.status !== 200) throw new Error(`/v2/execute: ${r.status} ${await r.text()}`);
  const ids = [];
  for (const block of (await r.text()).split("\n\n")) {
    if (!/^event: token$/m.test(block)) continue;
    const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
    ids.push(...JSON.parse(data).token_ids);
  }
  return ids;
}

async function llamaPositions(model, ids, nVocab) {
  const ctx = await model.createContext({ contextSize: 512, batchSize: 512, threads: THREADS, sequences: 1,
    flashAttention: false });
  const seq = ctx.getSequence();
  const want = { generateNext: { logits: { filter: { tokens: [], includeTop: nVocab } } } };
  const res = await seq.controlledEvaluate(ids.map((t, i) => (i < ids.length - 1 ? [t, want] : t)));
  const out = [];
  for (let i = 0; i < ids.length - 1; i++) {
    const logits = res[i]?.next?.logits;
    if (!logits || logits.size < nVocab) throw new Error(`position ${i}: llama.cpp gave ${logits?.size ?? 0} logits`);
    out.push(logits);
  }
  await ctx.dispose();
  return out;
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "llorch-plp-ref-"));
let worker = null, failed = 0;
try {
  const file = path.join(dir, "m.gguf");
  execFileSync(BIN, ["synth", "--arch", "qwen2", "--layers", "2", "--embd", "128", "--ff", "256", "--heads", "4",
    "--kv-heads", "2", "--vocab", "512", "--ctx", "512", "--type", "f32", "--seed", "7", "-o", file], { stdio: "pipe" });
  worker = await startWorker(file);
  await waitReady(worker.url);
  const llama = await openLlama();
  const model = await openModel(llama, file);
  const nVocab = model.tokens.vocabularySize ?? model.fileInsights?.tokens?.vocabularySize ?? 512;
  for (const prompt of PROMPTS) {
    const ev = await llorchPrompt(worker.url, prompt);
    const ids = ev.token_ids;
    const ref = Array.from(model.tokenize(prompt, false));
    if (JSON.stringify(ids) !== JSON.stringify(ref)) {
      console.log(`FAIL token ids differ: llorch ${ids} llama.cpp ${ref}`);
      failed++;
      continue;
    }
    const pos = await llamaPositions(model, ids, nVocab);
    let worst = 0;
    if (ev.logprobs[0].logprob !== null) { console.log("FAIL first token has a logprob"); failed++; }
    for (let i = 1; i < ids.length; i++) {
      const ls = logSoftmax(pos[i - 1]);
      const want = ls(ids[i]);
      const got = ev.logprobs[i].logprob;
      worst = Math.max(worst, Math.abs(got - want));
      if (!(Math.abs(got - want) <= EPS)) {
        console.log(`FAIL position ${i}: llorch ${got}, llama.cpp ${want}`);
        failed++;
      }
      // the alternatives: llama.cpp's best 3 logprobs (ids may swap at ties)
      const best = [...pos[i - 1].entries()].sort((a, b) => b[1] - a[1]).slice(0, 3).map(([id]) => ls(id));
      const tops = ev.logprobs[i].top_logprobs.map((t) => t.logprob);
      for (let k = 0; k < 3; k++) {
        if (!(Math.abs(tops[k] - best[k]) <= EPS)) {
          console.log(`FAIL position ${i} alternative ${k}: llorch ${tops[k]}, llama.cpp ${best[k]}`);
          failed++;
        }
      }
    }
    console.log(`${failed ? "" : "ok "}${ids.length} tokens, largest |llorch - llama.cpp| = ${worst.toExponential(2)}`);
  }
  await model.dispose();

  // fill-in-the-middle
  const fimFile = path.join(dir, "fim.gguf");
  execFileSync(BIN, ["synth", "--arch", "qwen2", "--layers", "2", "--embd", "128", "--ff", "256", "--heads", "4",
    "--kv-heads", "2", "--vocab", "512", "--ctx", "512", "--type", "f32", "--seed", "11", "--fim", "-o", fimFile],
  { stdio: "pipe" });
  worker.proc.removeAllListeners("exit");
  worker.proc.kill("SIGTERM");
  worker = await startWorker(fimFile);
  await waitReady(worker.url);
  const fim = await openModel(llama, fimFile);
  const inf = fim.tokens.infill;
  if (inf.prefix == null || inf.suffix == null || inf.middle == null) {
    console.log("FAIL llama.cpp finds no FIM tokens in the synth --fim vocabulary");
    failed++;
  } else {
    const pre = "def add(a, b):\n    ", suf = "\n    return c\n", N = 12;
    const ids = [inf.prefix, ...fim.tokenize(pre, false), inf.suffix, ...fim.tokenize(suf, false), inf.middle];
    const ref = await greedySteps(fim, ids, N, THREADS);
    const got = await llorchFim(worker.url, pre, suf, N);
    let same = 0;
    for (; same < N && got[same] === ref[same].token; same++);
    const tie = same < N && Math.abs(ref[same].top[0][1] - ref[same].top[1][1]) <= EPS && got[same] === ref[same].top[1][0];
    if (same < N && !tie) {
      console.log(`FAIL fill-in-the-middle: llorch ${got} vs llama.cpp ${ref.map((x) => x.token)} (differ at ${same})`);
      failed++;
    } else {
      console.log(`ok fill-in-the-middle: ${same} of ${N} greedy tokens equal${tie ? " (then a near-tie)" : ""}`);
    }
  }
  await fim.dispose();
  await llama.dispose();
} finally {
  if (worker) {
    worker.proc.removeAllListeners("exit");
    worker.proc.kill("SIGTERM");
  }
  fs.rmSync(dir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
