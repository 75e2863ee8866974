// The worker's chat prompts come from a template: a model without one
// refuses chat requests with a message saying how to name one (completions
// still work), `--chat-template chatml` or a .jinja file supplies one, and a
// template error is a 400 in the OpenAI envelope with the template's message.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { BIN, tempDir, startWorker } from './helpers.mjs';

function synth(dir, name, template) {
  const file = path.join(dir, `${name}.gguf`);
  execFileSync(BIN, ['synth', '--arch', 'qwen2', '--layers', '1', '--embd', '64', '--ff', '128', '--heads', '2',
    '--kv-heads', '1', '--vocab', '512', '--ctx', '512', '--type', 'f32', '--chat-template', template, '-o', file],
  { stdio: 'pipe' });
  return file;
}

async function post(w, route, body) {
  const r = await fetch(`${w.url}${route}`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

const chat = (w, messages) => post(w, '/v1/chat/completions', { messages, max_tokens: 1, temperature: 0 });

test('no template: chat refused with the fix named, completions served; --chat-template supplies one', async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const model = synth(dir, 'none', 'none');
  const w = await startWorker({ model });
  let r = await chat(w, [{ role: 'user', content: 'Hi' }]);
  assert.equal(r.status, 400);
  assert.equal(r.body.error.type, 'invalid_request_error');
  assert.match(r.body.error.message, /no tokenizer\.chat_template.*chat_template: chatml/);
  r = await post(w, '/v1/completions', { prompt: 'Hi', max_tokens: 1 });
  assert.equal(r.status, 200);
  await w.stop();

  const w2 = await startWorker({ model, args: ['--chat-template', 'chatml'] });
  t.after(() => w2.stop());
  r = await chat(w2, [{ role: 'user', content: 'Hi' }]);
  assert.equal(r.status, 200, JSON.stringify(r.body));

  // a .jinja file, and its refusal
  const tmpl = path.join(dir, 'strict.jinja');
  writeFileSync(tmpl, "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}" +
    "{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}" +
    '<|im_start|>assistant\n');
  const w3 = await startWorker({ model, args: ['--chat-template', tmpl] });
  t.after(() => w3.stop());
  r = await chat(w3, [{ role: 'system', content: 's' }, { role: 'user', content: 'Hi' }]);
  assert.equal(r.status, 400);
  assert.equal(r.body.error.param, 'messages');
  assert.match(r.body.error.message, /TemplateError: System role not supported/);
  r = await chat(w3, [{ role: 'user', content: 'Hi' }]);
  assert.equal(r.status, 200, JSON.stringify(r.body));
});

test('a missing --chat-template file fails the worker load with its path', async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const model = synth(dir, 'm', 'none');
  const w = await startWorker({ model, args: ['--chat-template', path.join(dir, 'missing.jinja')], waitReady: false });
  t.after(() => w.stop());
  const deadline = Date.now() + 10000;
  while (!w.logs.some((l) => l.includes('missing.jinja')) && !w.exited && Date.now() < deadline)
    await new Promise((res) => setTimeout(res, 50));
  assert.ok(w.logs.some((l) => l.includes('missing.jinja')), w.logs.join('\n'));
});
