// Chat templates through the whole cluster (--role=all: orchestrator and a
// local pool in one process, workers spawned by the pool): the catalog's
// chat_template (a .jinja file next to the model, or "chatml") reaches the
// worker, chat_template_kwargs reach the template, and a template's own
// refusal comes back as a 400 with its message. Prompts are checked by
// their token counts against `llorch chat-template` + `llorch tokenize`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { API_KEY, BIN, freePort, postJson, startRole, synthModel, tempDir, waitFor } from './lib.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const TEMPLATES = path.resolve(here, '../../data/chat-templates/templates');
const tmp = tempDir('llorch-template-e2e-');
let all;
let models;

const run = (args) => execFileSync(BIN, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

// The token count of a request rendered with a template (the model's own
// when tmpl is null) and tokenized with its special tokens.
function expectedTokens(model, tmpl, request) {
  const req = path.join(tmp.dir, 'req.json');
  writeFileSync(req, JSON.stringify({ add_generation_prompt: true, ...request }));
  const text = run(['chat-template', ...(tmpl ? ['--template', tmpl] : ['--model', model]), '--request', req]);
  return run(['tokenize', '--model', model, '--special', '--text', text]).trim().split(/\s+/).length;
}

async function chat(model, body) {
  return postJson(`${all.url}/v1/chat/completions`, { model, max_tokens: 1, temperature: 0, ...body });
}

before(async () => {
  models = path.join(tmp.dir, 'models');
  mkdirSync(models);
  const src = synthModel(tmp.dir, 'tiny');
  copyFileSync(src, path.join(models, 'tiny.gguf'));
  copyFileSync(path.join(TEMPLATES, 'meta-llama-Llama-3.1-8B-Instruct.jinja'), path.join(models, 'llama31.jinja'));
  copyFileSync(path.join(TEMPLATES, 'Qwen-Qwen3-0.6B.jinja'), path.join(models, 'qwen3.jinja'));
  copyFileSync(path.join(TEMPLATES, 'google-gemma-2-2b-it.jinja'), path.join(models, 'gemma2.jinja'));
  const port = await freePort();
  all = await startRole('all', {
    listen: `127.0.0.1:${port}`,
    log: { level: 'info', format: 'json' },
    shutdown_grace: '3s',
    pool: { model_dirs: [models], heartbeat_interval: '300ms', cpu_memory: '2GiB' },
    orchestrator: {
      api_keys: [API_KEY],
      models: [
        { name: 'own', file: 'tiny.gguf', ctx: 512, slots: 1, max_replicas: 1 },
        { name: 'llama', file: 'tiny.gguf', ctx: 512, slots: 1, chat_template: 'llama31.jinja' },
        { name: 'qwen3', file: 'tiny.gguf', ctx: 512, slots: 1, chat_template: 'qwen3.jinja' },
        { name: 'gemma', file: 'tiny.gguf', ctx: 512, slots: 1, chat_template: 'gemma2.jinja' },
        { name: 'chatml', file: 'tiny.gguf', ctx: 512, slots: 1, chat_template: 'chatml' },
      ],
    },
  }, { dir: tmp.dir, name: 'all' });
  await waitFor('local pool up', async () => (await fetch(`${all.url}/health/ready`)).status === 200, 20000);
});

after(async () => {
  if (all) await all.stop().catch(() => {});
  tmp.cleanup();
});

const MSGS = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hello there' }];

test('each catalog entry prompts with its own template', async () => {
  const cases = [
    ['own', null],
    ['llama', path.join(models, 'llama31.jinja')],
    ['qwen3', path.join(models, 'qwen3.jinja')],
  ];
  const counts = {};
  for (const [name, tmpl] of cases) {
    const r = await chat(name, { messages: MSGS });
    assert.equal(r.status, 200, `${name}: ${JSON.stringify(r.body)}`);
    counts[name] = r.body.usage.prompt_tokens;
    assert.equal(counts[name], expectedTokens(path.join(models, 'tiny.gguf'), tmpl, { messages: MSGS }), name);
  }
  assert.notEqual(counts.own, counts.llama, 'different templates, different prompts');
  // the built-in ChatML: no default system prompt, unlike the synthetic vocabulary's own
  const r = await chat('chatml', { messages: [MSGS[1]] });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  const ownUser = await chat('own', { messages: [MSGS[1]] });
  assert.ok(r.body.usage.prompt_tokens < ownUser.body.usage.prompt_tokens);
});

test('chat_template_kwargs reach the template through the orchestrator', async () => {
  const on = await chat('qwen3', { messages: [MSGS[1]] });
  const off = await chat('qwen3', { messages: [MSGS[1]], chat_template_kwargs: { enable_thinking: false } });
  assert.equal(on.status, 200);
  assert.equal(off.status, 200, JSON.stringify(off.body));
  const model = path.join(models, 'tiny.gguf');
  const tmpl = path.join(models, 'qwen3.jinja');
  assert.equal(off.body.usage.prompt_tokens,
    expectedTokens(model, tmpl, { messages: [MSGS[1]], kwargs: { enable_thinking: false } }));
  assert.ok(off.body.usage.prompt_tokens > on.body.usage.prompt_tokens, 'the empty think block is in the prompt');
  const bad = await chat('qwen3', { messages: [MSGS[1]], chat_template_kwargs: 'no' });
  assert.equal(bad.status, 400);
});

test("a template's refusal is a 400 carrying its message", async () => {
  const r = await chat('gemma', { messages: MSGS });
  assert.equal(r.status, 400, JSON.stringify(r.body));
  assert.match(r.body.error.message, /System role not supported/);
  const ok = await chat('gemma', { messages: [MSGS[1]] });
  assert.equal(ok.status, 200, JSON.stringify(ok.body));
});
