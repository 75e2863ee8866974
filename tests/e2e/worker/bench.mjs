#!/usr/bin/env node
// Worker throughput benchmark (not a test): aggregate generated tokens/s and
// time to first token with 1, 4 and 16 concurrent streams against a real
// `llorch --role=worker`.
//
//   node tests/e2e/worker/bench.mjs [--model FILE] [--threads N] [--tokens N]
//        [--prompt-tokens N] [--concurrency 1,4,16] [--device cpu] [--repeat N]
//
// Without --model it synthesizes a small llama-shaped model (Q8_0). Each
// level runs --repeat rounds of `concurrency` streams of --tokens tokens
// (greedy, ignore_eos, so every stream produces exactly that many) and
// reports the median round.
import { tempDir, BIN, startWorker, execute } from './helpers.mjs';
import { execFileSync } from 'node:child_process';
import path from 'node:path';

function arg(name, def) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
}

const threads = arg('threads', '2');
const tokens = Number(arg('tokens', '64'));
const promptTokens = Number(arg('prompt-tokens', '32'));
const levels = arg('concurrency', '1,4,16').split(',').map(Number);
const repeat = Number(arg('repeat', '3'));
const device = arg('device', 'cpu');
const maxC = Math.max(...levels);

const tmp = tempDir();
let model = arg('model', null);
if (!model) {
  model = path.join(tmp.dir, 'bench.gguf');
  execFileSync(BIN, ['synth', '--arch', 'llama', '--layers', '8', '--embd', '512', '--ff', '1408',
    '--heads', '8', '--kv-heads', '4', '--vocab', '4096', '--ctx', '2048', '--type', 'q8_0', '-o', model],
  { stdio: 'inherit' });
}

const ctx = Math.max(256, promptTokens + tokens + 16);
const w = await startWorker({ model, args: ['--threads', threads, '--slots', String(maxC), '--ctx', String(ctx),
  '--device', device, '--queue-max', '64'], timeoutMs: 120000 });

const info = await (await fetch(`${w.url}/v2/info`)).json();
// A prompt of about promptTokens tokens: "w0 w1 w2 ..." (a word is ~1-2 tokens).
const prompt = Array.from({ length: promptTokens }, (_, i) => `w${i}`).join(' ');

async function stream(i) {
  const t0 = performance.now();
  let first = null;
  const r = await execute(w, { prompt: `${i}: ${prompt}`, max_tokens: tokens, temperature: 0, ignore_eos: true }, {
    onEvent: (ev) => {
      if (ev.event === 'token' && first === null) first = performance.now() - t0;
      return false;
    },
  });
  const end = r.events.at(-1);
  if (end?.event !== 'end') throw new Error(`stream ${i} failed: ${JSON.stringify(end ?? r.body)}`);
  return { ttft: first, tokens: end.data.completion_tokens, promptTokens: end.data.prompt_tokens };
}

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * (s.length - 1) + 0.5))];
};

await stream(0); // warm up (page in the weights)
console.log(`model ${info.model.name} (${info.model.arch}, ${info.model.quant}, ${(info.model.n_params / 1e6).toFixed(1)}M params), ` +
  `device ${info.device}, threads ${info.threads}, slots ${info.slots.total}, ctx ${info.context_length}, ` +
  `${tokens} generated tokens per stream`);
console.log('streams | aggregate tok/s | per-stream tok/s | TTFT p50 ms | TTFT max ms | prompt tokens');
const results = [];
for (const c of levels) {
  const rounds = [];
  for (let r = 0; r < repeat; r++) {
    const t0 = performance.now();
    const res = await Promise.all(Array.from({ length: c }, (_, i) => stream(i + 1)));
    const wall = (performance.now() - t0) / 1000;
    const gen = res.reduce((a, x) => a + x.tokens, 0);
    rounds.push({ tps: gen / wall, ttfts: res.map((x) => x.ttft), prompt: res[0].promptTokens });
  }
  rounds.sort((a, b) => a.tps - b.tps);
  const m = rounds[Math.floor(rounds.length / 2)];
  results.push({ c, ...m });
  console.log(`${String(c).padStart(7)} | ${m.tps.toFixed(1).padStart(15)} | ${(m.tps / c).toFixed(1).padStart(16)} | ` +
    `${pct(m.ttfts, 0.5).toFixed(1).padStart(11)} | ${Math.max(...m.ttfts).toFixed(1).padStart(11)} | ${m.prompt}`);
}
await w.stop();
tmp.cleanup();
