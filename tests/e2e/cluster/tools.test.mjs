// Tool calling and reasoning through the orchestrator (--role=all: the
// orchestrator and a local pool; the pool spawns a real worker), with the
// official openai client. The worker's test hook replays scripted replies
// (LLORCH_TEST_HOOKS=1 and LLORCH_TEST_SCRIPT reach it through the pool's
// environment); the orchestrator relays the worker's parsed deltas.
//
// The model's template (TEMPLATE below) carries tool calls and results but
// teaches no tool syntax, so the worker parses calls with the generic JSON
// fallback ({"name":..,"arguments":..} naming a requested tool); the
// Hermes-tagged form is covered by tests/e2e/worker.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import { API_KEY, BIN, freePort, startRole, tempDir, waitFor } from './lib.mjs';

const TOOLS = [
  {
    type: 'function',
    function: {
      name: 'get_weather',
      parameters: { type: 'object', properties: { location: { type: 'string' } }, required: ['location'] },
    },
  },
];

// ChatML that writes an assistant's tool calls as JSON and a tool result as
// its content (the synthetic default would fail on content null).
const TEMPLATE = "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
  + "(message['content'] or '') }}{%- if message.tool_calls %}{{ message.tool_calls | tojson }}{%- endif %}"
  + "{{ '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}";

const SCRIPT = [
  { match: '"temperature": 18', reply: 'It is 18 degrees in Paris.' },
  {
    match: 'weather in Paris',
    reply: '<think>Use the tool.</think>\n{"name": "get_weather", "arguments": {"location": "Paris"}}',
  },
  { match: 'think about 2+2', reply: '<think>2+2 is 4.</think>\n\nIt is 4.' },
];

let tmp;
let all;
let client;

before(async () => {
  tmp = tempDir('llorch-tools-e2e-');
  const models = path.join(tmp.dir, 'models');
  execFileSync('mkdir', ['-p', models]);
  const templateFile = path.join(tmp.dir, 'tools.jinja');
  writeFileSync(templateFile, TEMPLATE);
  execFileSync(BIN, ['synth', '--arch', 'qwen2', '--layers', '2', '--embd', '64', '--ff', '128',
    '--heads', '4', '--kv-heads', '2', '--vocab', '512', '--ctx', '4096', '--type', 'f32',
    '--chat-template', templateFile, '-o', path.join(models, 'tools.gguf')], { stdio: 'pipe' });
  const script = path.join(tmp.dir, 'script.json');
  writeFileSync(script, JSON.stringify(SCRIPT));
  const port = await freePort();
  all = await startRole('all', {
    listen: `127.0.0.1:${port}`,
    log: { level: 'info', format: 'json' },
    shutdown_grace: '3s',
    pool: { model_dirs: [models], heartbeat_interval: '300ms', cpu_memory: '2GiB' },
    orchestrator: {
      api_keys: [API_KEY],
      models: [
        { name: 'tools', file: 'tools.gguf', ctx: 4096, slots: 2, keep_alive: -1 },
        { name: 'tools-inline', file: 'tools.gguf', ctx: 4096, slots: 1, keep_alive: -1, reasoning_format: 'none' },
      ],
    },
  }, { dir: tmp.dir, name: 'all', env: { LLORCH_TEST_HOOKS: '1', LLORCH_TEST_SCRIPT: script } });
  await waitFor('local pool up', async () => (await fetch(`${all.url}/health/ready`)).status === 200);
  client = new OpenAI({ baseURL: `${all.url}/v1`, apiKey: API_KEY, maxRetries: 0, timeout: 60000 });
});

after(async () => {
  if (all) await all.stop();
  tmp.cleanup();
});

const ask = (content, extra = {}) => ({
  model: 'tools', messages: [{ role: 'user', content }], tools: TOOLS, max_tokens: 200, ...extra,
});

test('orchestrator: tool_calls out, non-streaming and streamed (SDK reassembly), results back in', async () => {
  const r = await client.chat.completions.create(ask("What's the weather in Paris?"));
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
  const m = r.choices[0].message;
  assert.equal(m.content, null);
  assert.equal(m.reasoning_content, 'Use the tool.');
  assert.equal(m.tool_calls[0].function.name, 'get_weather');
  assert.match(m.tool_calls[0].id, /^call_/);
  assert.deepEqual(JSON.parse(m.tool_calls[0].function.arguments), { location: 'Paris' });
  assert.equal(r.system_fingerprint, null);

  const chunks = [];
  const stream = client.chat.completions.stream(ask("What's the weather in Paris?"));
  stream.on('chunk', (c) => chunks.push(c));
  const final = await stream.finalChatCompletion();
  assert.equal(final.choices[0].finish_reason, 'tool_calls');
  assert.deepEqual(JSON.parse(final.choices[0].message.tool_calls[0].function.arguments), { location: 'Paris' });
  const frags = chunks.flatMap((c) => c.choices[0]?.delta?.tool_calls || []);
  assert.equal(frags[0].function.name, 'get_weather');
  assert.equal(chunks.map((c) => c.choices[0]?.delta?.content || '').join(''), '');
  assert.equal(chunks.map((c) => c.choices[0]?.delta?.reasoning_content || '').join(''), 'Use the tool.');

  const back = await client.chat.completions.create({
    model: 'tools', tools: TOOLS,
    messages: [
      { role: 'user', content: "What's the weather in Paris?" },
      m,
      { role: 'tool', tool_call_id: m.tool_calls[0].id, content: '{"temperature": 18}' },
    ],
  });
  assert.equal(back.choices[0].message.content, 'It is 18 degrees in Paris.');
  assert.equal(back.choices[0].finish_reason, 'stop');
});

test('orchestrator: reasoning split, and the catalog reasoning_format none keeps it inline', async () => {
  const r = await client.chat.completions.create({ model: 'tools', messages: [{ role: 'user', content: 'think about 2+2' }] });
  assert.equal(r.choices[0].message.content, 'It is 4.');
  assert.equal(r.choices[0].message.reasoning_content, '2+2 is 4.');
  const inline = await client.chat.completions.create({
    model: 'tools-inline', messages: [{ role: 'user', content: 'think about 2+2' }],
  });
  assert.equal(inline.choices[0].message.content, '<think>2+2 is 4.</think>\n\nIt is 4.');
});

test('orchestrator: bad tool input is refused before queueing, as the worker refuses it', async () => {
  const cases = [
    [{ tools: [{ type: 'retrieval' }] }, 'tools[0].type'],
    [{ tools: TOOLS, tool_choice: 'always' }, 'tool_choice'],
    [{ messages: [{ role: 'user', content: 'hi' }, { role: 'tool', tool_call_id: 'nope', content: '1' }] },
      'messages[1].tool_call_id'],
    [{ n: 9 }, 'n'], // past request.max_n (8)
  ];
  for (const [extra, param] of cases) {
    const r = await fetch(`${all.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}` },
      body: JSON.stringify({ model: 'tools', messages: [{ role: 'user', content: 'hi' }], ...extra }),
    });
    assert.equal(r.status, 400, JSON.stringify(extra));
    const e = (await r.json()).error;
    assert.equal(e.param, param);
    assert.equal(e.type, 'invalid_request_error');
  }
});
