// n > 1 through the orchestrator (--role=all: the orchestrator and a local
// pool with one real worker on a synthesized model), with the official
// openai client: the request is admitted once and runs on one worker (one
// /v2/execute carrying n; the worker's events name their choice), the
// answer has n choices with index 0..n-1, streamed chunks carry their
// choice's index, usage counts the prompt once and sums the completions,
// and n past the orchestrator's request.max_n is a 400 naming 'n'.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { mkdirSync } from 'node:fs';
import OpenAI from 'openai';
import { ADMIN_KEY, API_KEY, freePort, startRole, synthModel, tempDir, waitFor } from './lib.mjs';
import { collectChoices } from '../worker/helpers.mjs';

let tmp, all, client;

before(async () => {
  tmp = tempDir('llorch-choices-e2e-');
  const models = path.join(tmp.dir, 'models');
  mkdirSync(models, { recursive: true });
  synthModel(models, 'tiny');
  const port = await freePort();
  all = await startRole('all', {
    listen: `127.0.0.1:${port}`,
    log: { level: 'info', format: 'json' },
    shutdown_grace: '3s',
    request: { max_n: 4 },
    pool: { model_dirs: [models], heartbeat_interval: '300ms', cpu_memory: '2GiB' },
    orchestrator: {
      api_keys: [API_KEY],
      admin_keys: [ADMIN_KEY],
      models: [{ name: 'tiny', file: 'tiny.gguf', ctx: 512, slots: 4, keep_alive: -1 }],
    },
  }, { dir: tmp.dir, name: 'all' });
  await waitFor('local pool up', async () => (await fetch(`${all.url}/health/ready`)).status === 200);
  client = new OpenAI({ baseURL: `${all.url}/v1`, apiKey: API_KEY, maxRetries: 0, timeout: 60000 });
});

after(async () => {
  if (all) await all.stop();
  tmp?.cleanup();
});

async function admitted() {
  const text = await (await fetch(`${all.url}/metrics`, { headers: { Authorization: `Bearer ${ADMIN_KEY}` } })).text();
  const m = /llorch_orch_requests_total\{outcome="admitted"\} (\d+)/.exec(text);
  assert.ok(m, 'no admitted counter in /metrics');
  return Number(m[1]);
}

const MESSAGES = [{ role: 'user', content: 'Tell me about the sea.' }];

test('chat n=3 through the orchestrator, not streamed: one admitted request, three choices', async () => {
  // a prompt nothing before shares: choice 0 computes it, the siblings take
  // it from the worker's prefix cache, and usage counts it (and its cached
  // part) once: choice 0's
  const messages = [{ role: 'user', content: 'A question nobody asked before: why is the sea salty?' }];
  const before = await admitted();
  const r = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 12, temperature: 0, n: 3 });
  assert.equal(await admitted(), before + 1, 'n=3 is one request in the orchestrator');
  assert.equal(r.usage.prompt_tokens_details.cached_tokens, 0);
  const one = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 12, temperature: 0 });
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2]);
  for (const c of r.choices) {
    assert.equal(c.message.content, one.choices[0].message.content);
    assert.equal(c.finish_reason, one.choices[0].finish_reason);
  }
  assert.equal(r.usage.prompt_tokens, one.usage.prompt_tokens);
  assert.equal(r.usage.completion_tokens, 3 * one.usage.completion_tokens);
});

test('chat n=3 through the orchestrator, streamed: chunks name their choice, usage summed', async () => {
  const ref = await client.chat.completions.create({ model: 'tiny', messages: MESSAGES, max_tokens: 12, temperature: 0 });
  const stream = await client.chat.completions.create({
    model: 'tiny', messages: MESSAGES, max_tokens: 12, temperature: 0, n: 3, stream: true,
    stream_options: { include_usage: true },
  });
  const { text, finish, roles, usage } = await collectChoices(stream, 3);
  assert.deepEqual(roles, [1, 1, 1]);
  assert.deepEqual(text, Array(3).fill(ref.choices[0].message.content));
  assert.deepEqual(finish, Array(3).fill(ref.choices[0].finish_reason));
  assert.equal(usage.prompt_tokens, ref.usage.prompt_tokens);
  assert.equal(usage.completion_tokens, 3 * ref.usage.completion_tokens);
});

test('completions n=3 through the orchestrator, streamed and not, with a seed', async () => {
  const body = { model: 'tiny', prompt: 'Once upon a time', max_tokens: 10, temperature: 1, seed: 11, n: 3 };
  const a = await client.completions.create(body);
  assert.deepEqual(a.choices.map((c) => c.index), [0, 1, 2]);
  const text = ['', '', ''];
  for await (const chunk of await client.completions.create({ ...body, stream: true })) {
    for (const c of chunk.choices) text[c.index] += c.text;
  }
  assert.deepEqual(text, a.choices.map((c) => c.text));
  const one = await client.completions.create({ ...body, n: 1 });
  assert.equal(one.choices[0].text, a.choices[0].text);
});

test('n past the orchestrator\'s request.max_n is a 400 naming n, before admission', async () => {
  const before = await admitted();
  await assert.rejects(
    client.chat.completions.create({ model: 'tiny', messages: MESSAGES, max_tokens: 2, n: 5 }),
    (e) => e.status === 400 && e.error?.param === 'n' && /request\.max_n = 4/.test(e.error.message));
  await assert.rejects(
    client.completions.create({ model: 'tiny', prompt: 'x', max_tokens: 2, n: 0 }),
    (e) => e.status === 400 && e.error?.param === 'n');
  assert.equal(await admitted(), before);
});
