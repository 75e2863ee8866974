// Anthropic Messages (POST /v1/messages) and OpenAI Responses (POST
// /v1/responses) through the orchestrator (--role=all: the orchestrator and
// a local pool whose worker replays scripted replies), with the official
// @anthropic-ai/sdk and openai clients unmodified. The orchestrator
// translates the request onto chat with the OpenAI layer, forwards the
// native /v2/execute body, and writes the worker's parsed deltas back in
// the client's API. The cases are tests/e2e/worker/dialects.mjs, the same
// ones the worker passes. Client keys: the Anthropic SDK sends x-api-key.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { API_KEY, freePort, startRole, tempDir, waitFor } from './lib.mjs';
import { synthDialectModel, writeScript, anthropicTests, responsesTests } from '../worker/dialects.mjs';

let tmp;
let all;
let anthropic;
let openai;

before(async () => {
  tmp = tempDir('llorch-dialects-e2e-');
  const models = path.join(tmp.dir, 'models');
  execFileSync('mkdir', ['-p', models]);
  synthDialectModel(path.join(models, 'dialect.gguf'));
  const script = writeScript(tmp.dir);
  const port = await freePort();
  all = await startRole('all', {
    listen: `127.0.0.1:${port}`,
    log: { level: 'info', format: 'json' },
    shutdown_grace: '3s',
    pool: { model_dirs: [models], heartbeat_interval: '300ms', cpu_memory: '2GiB' },
    orchestrator: {
      api_keys: [API_KEY],
      models: [{ name: 'dialect', file: 'dialect.gguf', ctx: 4096, slots: 2, keep_alive: -1 }],
    },
  }, { dir: tmp.dir, name: 'all', env: { LLORCH_TEST_HOOKS: '1', LLORCH_TEST_SCRIPT: script } });
  await waitFor('local pool up', async () => (await fetch(`${all.url}/health/ready`)).status === 200);
  anthropic = new Anthropic({ baseURL: all.url, apiKey: API_KEY, maxRetries: 0, timeout: 60000 });
  openai = new OpenAI({ baseURL: `${all.url}/v1`, apiKey: API_KEY, maxRetries: 0, timeout: 60000 });
});

after(async () => {
  if (all) await all.stop();
  tmp.cleanup();
});

anthropicTests(() => anthropic, 'dialect');
responsesTests(() => openai, 'dialect');

test('anthropic: a wrong x-api-key -> 401 in Anthropic\'s format; a bearer token works too', async () => {
  const wrong = new Anthropic({ baseURL: all.url, apiKey: 'not-the-key', maxRetries: 0 });
  await assert.rejects(wrong.messages.create({ model: 'dialect', max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] }),
    (e) => {
      assert.equal(e.status, 401);
      assert.equal(e.error.type, 'error');
      assert.equal(e.error.error.type, 'authentication_error');
      return true;
    });
  const bearer = new Anthropic({ baseURL: all.url, authToken: API_KEY, apiKey: null, maxRetries: 0 });
  const m = await bearer.messages.create({ model: 'dialect', max_tokens: 50, messages: [{ role: 'user', content: 'Please say hello' }] });
  assert.equal(m.content[0].text, 'Hello there! STOP and nothing after.');
});

test('anthropic and responses: an unknown model -> 404 in each API\'s format', async () => {
  await assert.rejects(anthropic.messages.create({ model: 'nope', max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] }),
    (e) => e.status === 404 && e.error.error.type === 'not_found_error');
  await assert.rejects(openai.responses.create({ model: 'nope', input: 'hi' }),
    (e) => e.status === 404 && e.code === 'model_not_found');
});
