#!/usr/bin/env node
// The llama.cpp side of the worker benchmark (not a test): the same
// measurement as bench.mjs - N concurrent greedy streams of --tokens tokens,
// aggregate tokens/s and time to first token - through llama.cpp's library
// with N parallel sequences in one context (node-llama-cpp 3.22.1's prebuilt
// CPU build, installed for the reference tests in tests/reference; its
// batching evaluates the sequences' tokens together in one llama_decode, as
// llama-server -np N does).
//
//   node tests/e2e/worker/bench-llamacpp.mjs --model FILE [--threads N] [--tokens N]
//        [--prompt-tokens N] [--concurrency 1,4,16] [--repeat N]
import path from 'node:path';
import { fileURLToPath } from 'node:url';

process.env.NODE_LLAMA_CPP_SKIP_DOWNLOAD = 'true';
const here = path.dirname(fileURLToPath(import.meta.url));
const { getLlama, LlamaLogLevel } = await import(
  path.resolve(here, '../../reference/node_modules/node-llama-cpp/dist/index.js'));

function arg(name, def) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
}

const modelPath = arg('model', null);
if (!modelPath) {
  console.error('bench-llamacpp.mjs: --model FILE is required (the same file given to bench.mjs --model)');
  process.exit(2);
}
const threads = Number(arg('threads', '1'));
const tokens = Number(arg('tokens', '64'));
const promptTokens = Number(arg('prompt-tokens', '32'));
const levels = arg('concurrency', '1,4,16').split(',').map(Number);
const repeat = Number(arg('repeat', '3'));

const llama = await getLlama({ gpu: false, build: 'never', skipDownload: true, usePrebuiltBinaries: true,
  progressLogs: false, logLevel: LlamaLogLevel.error, maxThreads: 0 });
const model = await llama.loadModel({ modelPath, gpuLayers: 0, useMmap: true });
const prompt = Array.from({ length: promptTokens }, (_, i) => `w${i}`).join(' ');
const perSeq = Math.max(256, promptTokens * 3 + tokens + 16);

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * (s.length - 1) + 0.5))];
};

async function stream(seq, i) {
  const ids = model.tokenize(`${i}: ${prompt}`, true);
  const t0 = performance.now();
  let first = null;
  let n = 0;
  for await (const _tok of seq.evaluate(ids, { temperature: 0 })) {
    if (first === null) first = performance.now() - t0;
    if (++n >= tokens) break;
  }
  return { ttft: first, tokens: n, promptTokens: ids.length };
}

console.log(`llama.cpp (node-llama-cpp ${llama.buildType ?? ''} CPU), model ${path.basename(modelPath)}, threads ${threads}, ` +
  `${tokens} generated tokens per stream`);
console.log('streams | aggregate tok/s | per-stream tok/s | TTFT p50 ms | TTFT max ms | prompt tokens');
for (const c of levels) {
  const ctx = await model.createContext({ contextSize: perSeq * c, sequences: c, threads, batchSize: Math.max(512, c) });
  const seqs = Array.from({ length: c }, () => ctx.getSequence());
  await stream(seqs[0], 0); // warm up
  const rounds = [];
  for (let r = 0; r < repeat; r++) {
    for (const s of seqs) await s.clearHistory();
    const t0 = performance.now();
    const res = await Promise.all(seqs.map((s, i) => stream(s, i + 1)));
    const wall = (performance.now() - t0) / 1000;
    rounds.push({ tps: res.reduce((a, x) => a + x.tokens, 0) / wall, ttfts: res.map((x) => x.ttft), prompt: res[0].promptTokens });
  }
  rounds.sort((a, b) => a.tps - b.tps);
  const m = rounds[Math.floor(rounds.length / 2)];
  console.log(`${String(c).padStart(7)} | ${m.tps.toFixed(1).padStart(15)} | ${(m.tps / c).toFixed(1).padStart(16)} | ` +
    `${pct(m.ttfts, 0.5).toFixed(1).padStart(11)} | ${Math.max(...m.ttfts).toFixed(1).padStart(11)} | ${m.prompt}`);
  for (const s of seqs) s.dispose();
  await ctx.dispose();
}
await model.dispose();
