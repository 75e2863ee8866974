// POST /v1/embeddings on the worker with the official `openai` client: the
// shared cases (embeddings.mjs), and embeddings batched with a running
// stream: the stream's tokens are the same as alone, and both finish.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

import { tempDir, synthModel, startWorker } from './helpers.mjs';
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
