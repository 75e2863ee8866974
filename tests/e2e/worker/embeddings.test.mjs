// POST /v1/embeddings on the worker with the official `openai` client: the
// shared cases (embeddings.mjs), and embeddings batched with a running
// stream: the stream's tokens are the same as alone, and both finish.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

import { execFileSync } from 'node:child_process';
import path from 'node:path';

import { tempDir, synthModel, startWorker, BIN } from './helpers.mjs';
import { embeddingsTests } from './embeddings.mjs';

const TOKEN = 'e2e-secret-token';
let tmp, w, client;

before(async () => {
  tmp = tempDir();
  const model = synthModel(tmp.dir);
  w = await startWorker({ model, args: ['--slots', '4', '--ctx', '512', '--token', TOKEN] });
  client = new OpenAI({ baseURL: `${w.url}/v1`, apiKey: TOKEN, maxRetries: 0 });
});

after(async () => {
  if (w) assert.equal((await w.stop()).code, 0);
  tmp?.cleanup();
});

embeddingsTests(() => client, () => w.url, () => ({ Authorization: `Bearer ${TOKEN}` }), 'tiny');

test('embeddings alongside a stream: batched with it, the stream unchanged', async () => {
  const req = { model: 'tiny', prompt: 'Once upon a time', max_tokens: 40, temperature: 0, ignore_eos: true };
  const alone = await client.completions.create(req);
  const texts = Array.from({ length: 24 }, (_, i) => `input number ${i} with a few more words to embed`);
  const solo = await client.embeddings.create({ model: 'tiny', input: texts, encoding_format: 'float' });
  let streamed = '';
  const stream = (async () => {
    const s = await client.completions.create({ ...req, stream: true });
    for await (const c of s) streamed += c.choices[0]?.text ?? '';
  })();
  const embs = await Promise.all([0, 1, 2].map(() =>
    client.embeddings.create({ model: 'tiny', input: texts, encoding_format: 'float' })));
  await stream;
  assert.equal(streamed, alone.choices[0].text);
  for (const e of embs)
    for (let i = 0; i < texts.length; i++)
      assert.ok(e.data[i].embedding.every((x, k) => Math.abs(x - solo.data[i].embedding[k]) < 1e-5));
});

test('embeddings: a model name the worker does not serve -> 404', async () => {
  await assert.rejects(client.embeddings.create({ model: 'nope', input: 'x' }),
    (e) => e.status === 404 && e.code === 'model_not_found' && e.param === 'model');
});

// The pooling a model file names (<arch>.pooling_type, written by synth
// --pooling): the same weights (same shape and seed) pooled three ways.
test('embeddings: pooling from the file: cls, mean, last (the default)', async () => {
  const vec = async (pooling, input) => {
    const file = path.join(tmp.dir, `pool-${pooling ?? 'default'}.gguf`);
    execFileSync(BIN, ['synth', '--arch', 'qwen2', '--layers', '2', '--embd', '64', '--ff', '128', '--heads', '4',
      '--kv-heads', '2', '--vocab', '512', '--ctx', '512', '--type', 'f32',
      ...(pooling ? ['--pooling', pooling] : []), '-o', file], { stdio: 'pipe' });
    const pw = await startWorker({ model: file, args: ['--ctx', '256'] });
    try {
      const c = new OpenAI({ baseURL: `${pw.url}/v1`, apiKey: 'none', maxRetries: 0 });
      const r = await c.embeddings.create({ input, encoding_format: 'float' });
      return r.data.map((d) => d.embedding);
    } finally {
      await pw.stop();
    }
  };
  const input = [[5], [5, 9, 9], [5, 11, 12, 13], [9, 9]];
  const [cls, mean, last, dflt] = [await vec('cls', input), await vec('mean', input), await vec('last', input),
    await vec(null, input)];
  const same = (a, b) => a.every((x, k) => Math.abs(x - b[k]) < 1e-5);
  // one token: every pooling is that token's state
  assert.ok(same(cls[0], mean[0]) && same(cls[0], last[0]));
  // cls: the first token's state, whatever follows (causal attention)
  assert.ok(same(cls[1], cls[0]) && same(cls[2], cls[0]));
  // last: a different input's last token differs; no metadata pools last
  assert.ok(!same(last[1], last[0]) && !same(last[1], last[2]));
  assert.ok(dflt.every((v, i) => same(v, last[i])));
  // mean is neither the first nor the last token's state
  assert.ok(!same(mean[1], cls[1]) && !same(mean[1], last[1]));
  // pooling none (per-token vectors) is no OpenAI embedding
  await assert.rejects(vec('none', 'x'), (e) => e.status === 400 && e.code === 'model_not_supported' &&
    /pooling_type 0 \(none\)/.test(e.message));
});
