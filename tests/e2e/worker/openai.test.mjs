// The worker's OpenAI-compatible API through the official `openai` client.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

import { tempDir, synthModel, startWorker } from './helpers.mjs';

const TOKEN = 'e2e-secret-token';
let tmp, model, w, client;

before(async () => {
  tmp = tempDir();
  model = synthModel(tmp.dir);
  w = await startWorker({ model, args: ['--slots', '2', '--ctx', '256', '--token', TOKEN] });
  client = new OpenAI({ baseURL: `${w.url}/v1`, apiKey: TOKEN, maxRetries: 0 });
});

after(async () => {
  if (w) assert.equal((await w.stop()).code, 0);
  tmp?.cleanup();
});

const MODEL = 'tiny'; // the file's base name is accepted as the model name
const greedy = { temperature: 0 };

test('chat, not streamed: content, finish_reason, usage', async () => {
  const r = await client.chat.completions.create({
    model: MODEL, messages: [{ role: 'user', content: 'Hello there' }], max_tokens: 8, ...greedy,
  });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  assert.ok(r.usage.prompt_tokens > 5);
  assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 8);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

test('chat, streamed: same text as not streamed, usage chunk last', async () => {
  const req = { model: MODEL, messages: [{ role: 'user', content: 'Tell me a story' }], max_tokens: 10, ...greedy };
  const whole = await client.chat.completions.create(req);
  const stream = await client.chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let finish = null;
  let usage = null;
  let sawRole = false;
  let chunksAfterUsage = 0;
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (usage) chunksAfterUsage++;
    if (chunk.usage) {
      assert.deepEqual(chunk.choices, []);
      usage = chunk.usage;
      continue;
    }
    const c = chunk.choices[0];
    if (c.delta.role) sawRole = true;
    if (c.delta.content) text += c.delta.content;
    if (c.finish_reason) finish = c.finish_reason;
  }
  assert.ok(sawRole);
  assert.equal(text, whole.choices[0].message.content);
  assert.equal(finish, whole.choices[0].finish_reason);
  /* the second request finds the first's prompt in the prefix cache: the
   * same counts, more of the prompt cached (and the same text, above) */
  const { prompt_tokens_details: d1, ...counts1 } = whole.usage;
  const { prompt_tokens_details: d2, ...counts2 } = usage;
  assert.deepEqual(counts2, counts1);
  assert.ok(d2.cached_tokens > d1.cached_tokens && d2.cached_tokens < usage.prompt_tokens,
    `cached_tokens ${d1.cached_tokens} then ${d2.cached_tokens} of ${usage.prompt_tokens}`);
  assert.equal(chunksAfterUsage, 0);
});

test('completions, streamed and not, agree', async () => {
  const req = { model: MODEL, prompt: 'Once upon a time', max_tokens: 12, ...greedy };
  const whole = await client.completions.create(req);
  assert.equal(whole.object, 'text_completion');
  assert.equal(whole.usage.completion_tokens, 12);
  assert.equal(whole.choices[0].finish_reason, 'length');
  const stream = await client.completions.create({ ...req, stream: true });
  let text = '';
  for await (const chunk of stream) text += chunk.choices[0]?.text ?? '';
  assert.equal(text, whole.choices[0].text);
});

test('stop strings: output ends before the stop string, finish_reason stop', async () => {
  const req = { model: MODEL, prompt: 'The quick brown fox', max_tokens: 24, ...greedy };
  const full = (await client.completions.create(req)).choices[0].text;
  // A stop string from the middle of the greedy output (it spans token
  // boundaries wherever it falls). The random model also emits stray bytes,
  // sent as U+FFFD; a stop string is matched against the model's bytes, so
  // pick two real characters.
  const cps = [...full];
  let at = 3;
  while (at + 1 < cps.length && (cps[at] === '\uFFFD' || cps[at + 1] === '\uFFFD')) at++;
  assert.ok(at + 1 < cps.length, `no usable stop string in ${JSON.stringify(full)}`);
  const stop = cps.slice(at, at + 2).join('');
  const expected = full.slice(0, full.indexOf(stop));
  const r = await client.completions.create({ ...req, stop: ['NEVER-THERE', stop] });
  assert.equal(r.choices[0].text, expected);
  assert.equal(r.choices[0].finish_reason, 'stop');
  // and as a single string, streamed
  const s = await client.completions.create({ ...req, stop, stream: true });
  let text = '';
  let finish = null;
  for await (const chunk of s) {
    text += chunk.choices[0]?.text ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(text, expected);
  assert.equal(finish, 'stop');
});

test('chat logprobs: one entry per token, top alternatives, greedy picks the best', async () => {
  const r = await client.chat.completions.create({
    model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 6, logprobs: true,
    top_logprobs: 3, ...greedy,
  });
  const content = r.choices[0].logprobs.content;
  assert.ok(content.length >= 1 && content.length <= r.usage.completion_tokens);
  for (const e of content) {
    assert.equal(typeof e.token, 'string');
    assert.ok(e.logprob <= 0);
    assert.ok(Array.isArray(e.bytes));
    assert.equal(e.top_logprobs.length, 3);
    assert.equal(e.top_logprobs[0].logprob, e.logprob);
    assert.ok(e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob);
  }
  assert.equal(content.map((e) => Buffer.from(e.bytes).toString('latin1')).join('').length > 0, true);
});

test('logit_bias: +100 forces a token at temperature 1; an id past the vocabulary is a 400', async () => {
  const r = await client.completions.create({
    model: MODEL, prompt: 'abc', max_tokens: 5, temperature: 1, seed: 3, logprobs: 1, logit_bias: { 300: 100 },
  });
  const toks = r.choices[0].logprobs.tokens;
  assert.equal(toks.length, 5);
  assert.ok(toks.every((t) => t === toks[0]), JSON.stringify(toks));
  const free = await client.completions.create({ model: MODEL, prompt: 'abc', max_tokens: 5, temperature: 1, seed: 3, logprobs: 1 });
  assert.notDeepEqual(free.choices[0].logprobs.tokens, toks, 'the bias changed the output');
  await assert.rejects(
    client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], logit_bias: { 999999: 5 } }),
    (e) => e.status === 400 && e.error?.param === 'logit_bias' && /vocabulary has/.test(e.message));
});

test('completions logprobs (integer)', async () => {
  const r = await client.completions.create({ model: MODEL, prompt: 'abc', max_tokens: 4, logprobs: 2, ...greedy });
  const lp = r.choices[0].logprobs;
  assert.equal(lp.tokens.length, lp.token_logprobs.length);
  assert.equal(lp.top_logprobs.length, lp.tokens.length);
  assert.ok(lp.tokens.length >= 1);
  assert.ok(Object.keys(lp.top_logprobs[0]).length >= 1);
});

test('seeded sampling repeats', async () => {
  const req = { model: MODEL, prompt: 'Seeds', max_tokens: 12, temperature: 1.0, seed: 7 };
  const a = await client.completions.create(req);
  const b = await client.completions.create(req);
  assert.equal(a.choices[0].text, b.choices[0].text);
});

test('bad request: 400 naming the parameter', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }], temperature: 5 }),
    (e) => e.status === 400 && e.param === 'temperature' && e.type === 'invalid_request_error',
  );
  await assert.rejects(
    client.chat.completions.create({ model: MODEL, messages: [{ role: 'robot', content: 'x' }] }),
    (e) => e.status === 400 && e.param === 'messages[0].role',
  );
  await assert.rejects(
    client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }], n: 9 }), // past request.max_n (8)
    (e) => e.status === 400 && e.param === 'n',
  );
  await assert.rejects(
    client.completions.create({ model: MODEL, prompt: 'x', max_tokens: -1 }),
    (e) => e.status === 400 && e.param === 'max_tokens',
  );
  // a prompt longer than the context (256): both numbers in the message
  await assert.rejects(
    client.completions.create({ model: MODEL, prompt: 'word '.repeat(400), max_tokens: 1 }),
    (e) => e.status === 400 && e.code === 'context_length_exceeded' && /256/.test(e.message) &&
      /prompt has \d+ tokens/.test(e.message),
  );
});

test('unknown model: 404 model_not_found', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e.status === 404 && e.code === 'model_not_found' && e.param === 'model',
  );
});

test('missing or wrong token: 401; health needs none', async () => {
  const anon = new OpenAI({ baseURL: `${w.url}/v1`, apiKey: 'wrong', maxRetries: 0 });
  await assert.rejects(anon.models.list(), (e) => e.status === 401);
  const r = await fetch(`${w.url}/v1/models`);
  assert.equal(r.status, 401);
  const body = await r.json();
  assert.equal(body.error.type, 'authentication_error');
  assert.equal((await fetch(`${w.url}/health/ready`)).status, 200);
  assert.equal((await fetch(`${w.url}/v2/info`)).status, 401);
  assert.equal((await fetch(`${w.url}/health/live`)).status, 200);
  assert.equal((await fetch(`${w.url}/metrics`)).status, 401);
  const m = await fetch(`${w.url}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
  assert.equal(m.status, 200);
  assert.match(await m.text(), /# TYPE /);
});

test('models list and max_tokens clamped to the context', async () => {
  const models = await client.models.list();
  const ids = [];
  for await (const m of models) ids.push(m.id);
  assert.equal(ids.length, 1);
  const r = await client.completions.create({ model: ids[0], prompt: 'x', max_tokens: 100000, ...greedy,
    // ignore_eos is an extension: run to the end of the context
    ignore_eos: true });
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.prompt_tokens + r.usage.completion_tokens, 256);
});
