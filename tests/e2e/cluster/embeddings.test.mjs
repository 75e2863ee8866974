// POST /v1/embeddings through the orchestrator (--role=all: the
// orchestrator and a local pool that starts a worker for the model) with the
// official openai client: the cases the worker passes (../worker/embeddings.mjs),
// the same vectors as the worker gives directly, a model the catalog lacks
// -> 404, and bad input refused by the orchestrator before queueing.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { mkdirSync } from 'node:fs';
import OpenAI from 'openai';
import { API_KEY, freePort, startRole, tempDir, waitFor, synthModel } from './lib.mjs';
import { embeddingsTests } from '../worker/embeddings.mjs';
import { startWorker } from '../worker/helpers.mjs';

let tmp, all, openai, models;

before(async () => {
  tmp = tempDir('llorch-embed-e2e-');
  models = path.join(tmp.dir, 'models');
  mkdirSync(models, { recursive: true });
  synthModel(models, 'tiny');
  const port = await freePort();
  all = await startRole('all', {
    listen: `127.0.0.1:${port}`,
    log: { level: 'info', format: 'json' },
    shutdown_grace: '3s',
    pool: { model_dirs: [models], heartbeat_interval: '300ms', cpu_memory: '2GiB' },
    orchestrator: {
      api_keys: [API_KEY],
      models: [{ name: 'embedder', file: 'tiny.gguf', ctx: 512, slots: 4, keep_alive: -1 }],
    },
  }, { dir: tmp.dir, name: 'all' });
  await waitFor('local pool up', async () => (await fetch(`${all.url}/health/ready`)).status === 200);
  openai = new OpenAI({ baseURL: `${all.url}/v1`, apiKey: API_KEY, maxRetries: 0, timeout: 60000 });
});

after(async () => {
  if (all) await all.stop();
  tmp.cleanup();
});

embeddingsTests(() => openai, () => all.url, () => ({ Authorization: `Bearer ${API_KEY}` }), 'embedder');

test('embeddings through the orchestrator equal the worker\'s own', async () => {
  const input = ['one text', 'another text'];
  const via = await openai.embeddings.create({ model: 'embedder', input, encoding_format: 'float' });
  const w = await startWorker({ model: path.join(models, 'tiny.gguf'), args: ['--ctx', '512'] });
  try {
    const direct = new OpenAI({ baseURL: `${w.url}/v1`, apiKey: 'none', maxRetries: 0 });
    const d = await direct.embeddings.create({ input, model: 'tiny', encoding_format: 'float' });
    assert.deepEqual(via.data.map((x) => x.embedding), d.data.map((x) => x.embedding));
    assert.deepEqual(via.usage, d.usage);
    assert.equal(via.model, 'embedder');
  } finally {
    await w.stop();
  }
});

test('embeddings: a model the catalog lacks -> 404; no model -> 400; no key -> 401', async () => {
  await assert.rejects(openai.embeddings.create({ model: 'nope', input: 'x' }),
    (e) => e.status === 404 && e.code === 'model_not_found');
  const r = await fetch(`${all.url}/v1/embeddings`, {
    method: 'POST', headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${API_KEY}` },
    body: JSON.stringify({ input: 'x' }),
  });
  assert.equal(r.status, 400);
  assert.equal((await r.json()).error.param, 'model');
  const anon = new OpenAI({ baseURL: `${all.url}/v1`, apiKey: 'wrong-key', maxRetries: 0 });
  await assert.rejects(anon.embeddings.create({ model: 'embedder', input: 'x' }), (e) => e.status === 401);
});
