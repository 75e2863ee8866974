#!/usr/bin/env node
/*
 * llorch's POST /v1/embeddings against llama.cpp's embeddings (run through
 * `run-reference.sh BIN --embed`, which installs node-llama-cpp first when
 * needed).
 *
 *   node embed-test.mjs --llorch BIN [--threads 2] [--min-cos 0.9999] [--keep DIR]
 *
 * Small random-weight models synthesized with `llorch synth`, one per
 * architecture and pooling: the file's <arch>.pooling_type (mean, cls, last,
 * written with synth --pooling) or none at all, where llorch's default
 * (last) is what llama.cpp returns too (node-llama-cpp then reads the last
 * token's hidden state). For each model, a real worker (--role=worker on
 * 127.0.0.1) answers one request with several texts (so they are batched
 * together), and node-llama-cpp's embedding context computes each text
 * alone. Both tokenize the same way (plain text, BOS/EOS as the vocabulary
 * says). llama.cpp's vectors are not normalised and llorch's are (L2), so
 * the comparison is the cosine, which does not depend on the scale; every
 * input must reach --min-cos. llorch's vectors must also have norm 1.
 *
 * llama.cpp's CPU variants differ in their reductions (see reference-test.mjs):
 * when ggml picks an AVX-512 variant here, llama.cpp's AVX2 variant (whose
 * sums llorch's kernels reproduce) runs too, in a child process, and an
 * input passes when its cosine to either variant reaches --min-cos. Both
 * cosines are printed, with the cosine between the two variants themselves,
 * so the line shows how far llama.cpp's own variants are apart.
 */
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import process from "node:process";

import { openLlama, openModel, embedTexts, makeAvx2Mirror, embedChild } from "./llamacpp.mjs";

const TEXTS = [
  "The quick brown fox jumps over the lazy dog. Hello, world! 12345 + 678 = ?",
  "Once upon a time, in a land far away, there lived a small robot named Tik.",
  "def add(a, b):\n    return a + b  # sums two numbers",
  "Ärger, naïve café; 東京 is big. 3.14159 ≈ π!",
  "x",
];

const MODELS = [
  { arch: "llama", type: "f16", pooling: null },
  { arch: "qwen2", type: "f16", pooling: "mean" },
  { arch: "qwen3", type: "f16", pooling: "last" },
  { arch: "llama", type: "f32", pooling: "cls" },
  { arch: "qwen3", type: "q8_0", pooling: "mean" },
  { arch: "qwen2", type: "q4_k", pooling: "last" },
];

function parseArgs(argv) {
  const o = { llorch: process.env.LLORCH_BIN, threads: 2, minCos: 0.9999, keep: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i], v = argv[i + 1];
    if (a === "--llorch") { o.llorch = v; i++; }
    else if (a === "--threads") { o.threads = Number(v); i++; }
    else if (a === "--min-cos") { o.minCos = Number(v); i++; }
    else if (a === "--keep") { o.keep = v; i++; }
    else throw new Error(`unknown option ${a}`);
  }
  if (!o.llorch) throw new Error("--llorch BIN is required");
  return o;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/* A worker on a free loopback port; resolves once /health/ready says 200. */
async function startWorker(bin, file, threads) {
  const proc = spawn(bin, ["--role=worker", "--model", file, "--listen", "127.0.0.1:0", "--log-format", "json",
    "--threads", String(threads), "--ctx", "512", "--slots", "4"], { stdio: ["ignore", "ignore", "pipe"] });
  let logs = "", url = null, exited = null;
  proc.on("exit", (code, signal) => { exited = { code, signal }; });
  proc.stderr.on("data", (d) => {
    logs += d.toString();
    const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(logs);
    if (m && !url) url = `http://127.0.0.1:${m[1]}`;
  });
  const deadline = Date.now() + 60000;
  let last = "no answer yet";
  for (;;) {
    if (exited) throw new Error(`worker exited (${JSON.stringify(exited)}):\n${logs}`);
    if (Date.now() > deadline) throw new Error(`worker not ready in 60 s (last: ${last}):\n${logs}`);
    if (url) {
      // each probe bounded in time, its body read (so its connection is free again)
      const r = await fetch(`${url}/health/ready`, { signal: AbortSignal.timeout(2000) })
        .catch((e) => { last = String(e && e.cause ? e.cause : e); return null; });
      if (r) {
        last = `HTTP ${r.status}`;
        await r.arrayBuffer();
        if (r.status === 200) break;
      }
    }
    await sleep(25);
  }
  return {
    url,
    stop: async () => {
      if (exited) return;
      proc.kill("SIGTERM");
      const t = Date.now() + 10000;
      while (!exited && Date.now() < t) await sleep(20);
      if (!exited) proc.kill("SIGKILL");
    },
  };
}

function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / Math.sqrt(na * nb);
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const dir = o.keep || fs.mkdtempSync(path.join(os.tmpdir(), "llorch-embed-ref-"));
  fs.mkdirSync(dir, { recursive: true });
  const llama = await openLlama();
  const avx2 = /AVX512 = 1/.test(llama.systemInfo)
    ? makeAvx2Mirror(fs.mkdtempSync(path.join(os.tmpdir(), "llorch-embed-avx2-"))) : null;
  console.log(`llama.cpp ${llama.llamaCppRelease?.release ?? ""} (${llama.buildType}); ${MODELS.length} models x ` +
    `${TEXTS.length} texts, cosine >= ${o.minCos}` +
    (avx2 ? "; an AVX-512 variant here: llama.cpp's AVX2 variant is the second reference" : ""));
  let failures = 0, worst = 1;
  try {
    for (const [mi, m] of MODELS.entries()) {
      const file = path.join(dir, `embed-${mi}.gguf`);
      const args = ["synth", "--arch", m.arch, "--layers", "2", "--embd", "256", "--ff", "512", "--heads", "4",
        "--kv-heads", "2", "--type", m.type, "--seed", String(11 + mi), "-o", file];
      if (m.arch === "qwen3") args.push("--head-dim", "128");
      if (m.pooling) args.push("--pooling", m.pooling);
      const s = spawnSync(o.llorch, args, { encoding: "utf8" });
      if (s.status !== 0) throw new Error(`llorch synth failed: ${s.stderr}`);
      const label = `${m.arch}/${m.type} pooling ${m.pooling ?? "(none in the file: last)"}`;

      const model = await openModel(llama, file);
      const ref = await embedTexts(model, TEXTS, o.threads);
      await model.dispose();

      const w = await startWorker(o.llorch, file, o.threads);
      let mine;
      try {
        const r = await fetch(`${w.url}/v1/embeddings`, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ input: TEXTS, encoding_format: "float" }),
        });
        const body = await r.json();
        if (r.status !== 200) throw new Error(`${label}: HTTP ${r.status}: ${JSON.stringify(body)}`);
        mine = body.data.map((d) => d.embedding);
      } finally {
        await w.stop();
      }

      const alt = avx2 ? embedChild(avx2, file, TEXTS, o.threads) : null;
      const cosSel = TEXTS.map((_, i) => cosine(mine[i], ref.inputs[i].vector));
      const cosAlt = alt ? TEXTS.map((_, i) => cosine(mine[i], alt.inputs[i].vector)) : null;
      const cos = cosSel.map((c, i) => Math.max(c, cosAlt ? cosAlt[i] : -1));
      const norms = mine.map((v) => Math.sqrt(v.reduce((s, x) => s + x * x, 0)));
      const bad = cos.some((c) => !(c >= o.minCos)) || norms.some((n) => Math.abs(n - 1) > 1e-4) ||
        mine.some((v, i) => v.length !== ref.inputs[i].vector.length);
      worst = Math.min(worst, ...cos);
      if (bad) failures++;
      const f = (a) => a.map((c) => c.toFixed(9)).join(" ");
      console.log(`${bad ? "FAIL" : "ok  "} ${label}: cosine ${f(cosSel)}` +
        (alt ? ` | AVX2 variant ${f(cosAlt)} | variant to variant ${f(TEXTS.map((_, i) => cosine(ref.inputs[i].vector, alt.inputs[i].vector)))}` : "") +
        `${bad ? ` norms ${norms.map((n) => n.toFixed(6)).join(" ")}` : ""}`);
    }
  } finally {
    await llama.dispose();
    if (!o.keep) fs.rmSync(dir, { recursive: true, force: true });
    if (avx2) fs.rmSync(path.dirname(avx2), { recursive: true, force: true });
  }
  console.log(`${failures ? "FAILED" : "passed"}: ${MODELS.length - failures}/${MODELS.length} models, lowest cosine ${worst.toFixed(9)}`);
  process.exit(failures ? 1 : 0);
}

main().catch((e) => {
  console.error(`embed-test: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
