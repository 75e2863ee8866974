// Tool calling and reasoning against the real worker, with the official
// openai client. Random weights never write a tool call, so the worker runs
// with its test hook (--test-script, allowed only with LLORCH_TEST_HOOKS=1):
// a request whose prompt contains a script entry's "match" gets that entry's
// reply, tokenized and replayed through the scheduler, the detokenizer, the
// output parser and the HTTP/SSE path; only the sampler is bypassed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import { BIN, tempDir, synthModel, startWorker, execute } from './helpers.mjs';

export const TOOLS = [
  {
    type: 'function',
    function: {
      name: 'get_weather',
      description: 'Get the current weather in a city',
      parameters: {
        type: 'object',
        properties: { location: { type: 'string' }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
        required: ['location'],
      },
    },
  },
  { type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: {} } } },
];

// Entries are tried in order; the first whose match is in the prompt wins.
export const SCRIPT = [
  // the tool result is back in the prompt: the final answer
  { match: '"temperature": 18', reply: 'It is 18 degrees and clear in Paris.' },
  {
    match: 'weather in Paris',
    reply: '<think>The user wants the weather. A draft: <tool_call>{"name": "get_time", "arguments": {}}</tool_call> '
      + 'no, weather.</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris", "unit": "celsius"}}\n</tool_call>',
  },
  {
    match: 'two cities',
    reply: 'Checking both.\n<tool_call>\n{"name": "get_weather", "arguments": {"location": "Oslo"}}\n</tool_call>\n'
      + '<tool_call>\n{"name": "get_weather", "arguments": {"location": "Lima"}}\n</tool_call>',
  },
  { match: 'think about 2+2', reply: '<think>2+2 is 4, simple.</think>\n\nThe answer is 4.' },
  { match: 'show me tags', reply: 'Write <tool_call>not a call</tool_call> in the template.' },
];

let tmp;
let worker;
let client;

// Qwen2.5-Instruct's own chat template (it writes the tool list and tool
// results the Hermes way, and teaches <tool_call>).
export const QWEN25_TEMPLATE = fileURLToPath(
  new URL('../../data/chat-templates/templates/Qwen-Qwen2.5-7B-Instruct.jinja', import.meta.url));

// The tiny model with room for the tool list in its prompt (the synthetic
// vocabulary spends many tokens on JSON), with a real template.
export function synthLongModel(dir) {
  const file = path.join(dir, 'tools.gguf');
  execFileSync(BIN, ['synth', '--arch', 'qwen2', '--layers', '2', '--embd', '64', '--ff', '128',
    '--heads', '4', '--kv-heads', '2', '--vocab', '512', '--ctx', '4096', '--type', 'f32',
    '--chat-template', QWEN25_TEMPLATE, '-o', file], { stdio: 'pipe' });
  return file;
}

export function writeScript(dir) {
  const file = path.join(dir, 'script.json');
  writeFileSync(file, JSON.stringify(SCRIPT));
  return file;
}

before(async () => {
  tmp = tempDir();
  const model = synthLongModel(tmp.dir);
  process.env.LLORCH_TEST_HOOKS = '1';
  // The Hermes format is recognised from the template (no --tool-call-format).
  worker = await startWorker({
    model, args: ['--test-script', writeScript(tmp.dir), '--ctx', '4096'],
  });
  delete process.env.LLORCH_TEST_HOOKS;
  client = new OpenAI({ baseURL: `${worker.url}/v1`, apiKey: 'none', maxRetries: 0 });
});

after(async () => {
  if (worker) {
    await worker.stop();
    // Under ASan/UBSan a report on stderr fails the file.
    const bad = worker.logs.filter((l) => /Sanitizer|runtime error:/.test(l));
    assert.deepEqual(bad, [], 'sanitizer reports from the worker');
  }
  tmp.cleanup();
});

const ask = (content, extra = {}) => ({
  model: 'tools', messages: [{ role: 'user', content }], tools: TOOLS, max_tokens: 200, ...extra,
});

export function checkWeatherCall(msg) {
  assert.equal(msg.content, null);
  assert.equal(msg.tool_calls.length, 1);
  const call = msg.tool_calls[0];
  assert.equal(call.type, 'function');
  assert.match(call.id, /^call_[A-Za-z0-9]{24}$/);
  assert.equal(call.function.name, 'get_weather');
  assert.deepEqual(JSON.parse(call.function.arguments), { location: 'Paris', unit: 'celsius' });
  // the call drafted while thinking stayed in the reasoning
  assert.match(msg.reasoning_content, /A draft: <tool_call>\{"name": "get_time"/);
}

test('tool call, non-streaming: message.tool_calls and finish_reason tool_calls', async () => {
  const r = await client.chat.completions.create(ask("What's the weather in Paris?"));
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
  checkWeatherCall(r.choices[0].message);
  assert.ok(r.usage.completion_tokens > 10);
});

test('tool call, streamed: delta.tool_calls fragments reassembled by the SDK, no markup in content', async () => {
  const chunks = [];
  const stream = client.chat.completions.stream(ask("What's the weather in Paris?"));
  stream.on('chunk', (c) => chunks.push(c));
  const final = await stream.finalChatCompletion();
  assert.equal(final.choices[0].finish_reason, 'tool_calls');
  const m = final.choices[0].message;
  assert.equal(m.tool_calls.length, 1);
  assert.equal(m.tool_calls[0].function.name, 'get_weather');
  assert.deepEqual(JSON.parse(m.tool_calls[0].function.arguments), { location: 'Paris', unit: 'celsius' });
  // the raw fragments: the first of a call has index, id and name; then arguments
  const frags = chunks.flatMap((c) => c.choices[0]?.delta?.tool_calls || []);
  assert.ok(frags.length >= 2);
  assert.equal(frags[0].index, 0);
  assert.match(frags[0].id, /^call_/);
  assert.equal(frags[0].function.name, 'get_weather');
  for (const f of frags.slice(1)) assert.equal(f.id, undefined);
  const content = chunks.map((c) => c.choices[0]?.delta?.content || '').join('');
  assert.equal(content, '');
  const reasoning = chunks.map((c) => c.choices[0]?.delta?.reasoning_content || '').join('');
  assert.match(reasoning, /^The user wants the weather\. A draft: <tool_call>/);
});

test('two calls in one answer: indexes 0 and 1, content before them', async () => {
  const r = await client.chat.completions.create(ask('Weather in two cities?'));
  const m = r.choices[0].message;
  assert.equal(m.content, 'Checking both.');
  assert.deepEqual(m.tool_calls.map((c) => JSON.parse(c.function.arguments).location), ['Oslo', 'Lima']);
  assert.notEqual(m.tool_calls[0].id, m.tool_calls[1].id);
  const chunks = [];
  const stream = client.chat.completions.stream(ask('Weather in two cities?'));
  stream.on('chunk', (c) => chunks.push(c));
  const final = await stream.finalChatCompletion();
  assert.equal(final.choices[0].message.content, 'Checking both.');
  assert.deepEqual(final.choices[0].message.tool_calls.map((c) => c.function.name), ['get_weather', 'get_weather']);
});

test('tool results back in: assistant tool_calls (JSON-string arguments) and a tool message', async () => {
  const first = await client.chat.completions.create(ask("What's the weather in Paris?"));
  const call = first.choices[0].message.tool_calls[0];
  const r = await client.chat.completions.create({
    model: 'tools',
    tools: TOOLS,
    messages: [
      { role: 'user', content: "What's the weather in Paris?" },
      first.choices[0].message,
      { role: 'tool', tool_call_id: call.id, content: JSON.stringify({ temperature: 18, sky: 'clear' }, null, 1).replace(/\n/g, '') },
    ],
  });
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.equal(r.choices[0].message.content, 'It is 18 degrees and clear in Paris.');
  assert.equal(r.choices[0].message.tool_calls, undefined);
});

test('reasoning split: reasoning_content apart from the answer, streamed and not', async () => {
  const r = await client.chat.completions.create({ model: 'tools', messages: [{ role: 'user', content: 'think about 2+2' }] });
  assert.equal(r.choices[0].message.content, 'The answer is 4.');
  assert.equal(r.choices[0].message.reasoning_content, '2+2 is 4, simple.');
  const stream = await client.chat.completions.create({
    model: 'tools', messages: [{ role: 'user', content: 'think about 2+2' }], stream: true,
  });
  let content = '';
  let reasoning = '';
  for await (const c of stream) {
    content += c.choices[0]?.delta?.content || '';
    reasoning += c.choices[0]?.delta?.reasoning_content || '';
  }
  assert.equal(content, 'The answer is 4.');
  assert.equal(reasoning, '2+2 is 4, simple.');
  // reasoning_format none: the thinking stays inline
  const inline = await client.chat.completions.create({
    model: 'tools', messages: [{ role: 'user', content: 'think about 2+2' }], reasoning_format: 'none',
  });
  assert.equal(inline.choices[0].message.content, '<think>2+2 is 4, simple.</think>\n\nThe answer is 4.');
  assert.equal(inline.choices[0].message.reasoning_content, undefined);
});

test('text that only looks like a call stays content; tool_choice none turns parsing off', async () => {
  const r = await client.chat.completions.create(ask('show me tags'));
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.equal(r.choices[0].message.content, 'Write <tool_call>not a call</tool_call> in the template.');
  const none = await client.chat.completions.create(ask("What's the weather in Paris?", { tool_choice: 'none' }));
  assert.equal(none.choices[0].finish_reason, 'stop');
  assert.equal(none.choices[0].message.tool_calls, undefined);
  assert.match(none.choices[0].message.content, /<tool_call>\n\{"name": "get_weather"/);
});

test('tool_choice required / named: the sampled output is forced into a call (grammar, no script)', async () => {
  // No scripted reply matches: the random model samples under the tool-call
  // grammar in the template's Hermes syntax.
  const unit = {
    type: 'function',
    function: {
      name: 'set_unit',
      parameters: {
        type: 'object', properties: { unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
        required: ['unit'], additionalProperties: false,
      },
    },
  };
  const clock = {
    type: 'function',
    function: { name: 'get_time', parameters: { type: 'object', properties: {}, additionalProperties: false } },
  };
  for (const tool_choice of ['required', { type: 'function', function: { name: 'set_unit' } }]) {
    for (const seed of [1, 2, 3]) {
      const r = await client.chat.completions.create({
        model: 'tools', messages: [{ role: 'user', content: 'pick any unit you like' }],
        tools: [unit, clock], tool_choice, max_tokens: 200, temperature: 1, seed,
      });
      const c = r.choices[0];
      assert.equal(c.finish_reason, 'tool_calls', JSON.stringify(c));
      assert.equal(c.message.tool_calls.length, 1);
      const call = c.message.tool_calls[0].function;
      if (typeof tool_choice === 'object') assert.equal(call.name, 'set_unit');
      else assert.ok(['set_unit', 'get_time'].includes(call.name), call.name);
      const args = JSON.parse(call.arguments);
      if (call.name === 'set_unit') assert.ok(['celsius', 'fahrenheit'].includes(args.unit), call.arguments);
    }
  }
});

test('the native API carries the parsed deltas (what the orchestrator relays)', async () => {
  const r = await execute(worker, {
    messages: [{ role: 'user', content: "What's the weather in Paris?" }], tools: TOOLS, max_tokens: 200,
  });
  assert.equal(r.status, 200);
  const end = r.events.find((e) => e.event === 'end');
  assert.equal(end.data.finish_reason, 'tool_calls');
  const deltas = r.events.flatMap((e) => e.data.deltas || []);
  const calls = deltas.flatMap((d) => d.tool_calls || []);
  assert.equal(calls[0].function.name, 'get_weather');
  assert.ok(deltas.some((d) => d.reasoning_content));
  // the raw text is still there, token by token
  const text = r.events.filter((e) => e.event === 'token').map((e) => e.data.text).join('');
  assert.match(text, /<tool_call>/);
});

async function status400(body) {
  const r = await fetch(`${worker.url}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  assert.equal(r.status, 400);
  return (await r.json()).error;
}

export const BAD_INPUTS = [
  [{ tools: [{ type: 'retrieval' }] }, 'tools[0].type', /"function"/],
  [{ tools: { type: 'function' } }, 'tools', /array/],
  [{ tools: [{ type: 'function', function: { description: 'no name' } }] }, 'tools[0].function.name', /required/],
  [{ tools: [{ type: 'function', function: { name: 'bad name!' } }] }, 'tools[0].function.name', /A-Za-z0-9/],
  [{ tools: TOOLS, tool_choice: 'always' }, 'tool_choice', /"auto", "none", "required"/],
  [{ tools: TOOLS, tool_choice: { type: 'function', function: { name: 'nope' } } }, 'tool_choice.function.name', /not in 'tools'/],
  [{ tool_choice: 'required' }, 'tool_choice', /'tools' is empty/],
  [{ tools: TOOLS, parallel_tool_calls: 'yes' }, 'parallel_tool_calls', /true or false|boolean/],
  [{ messages: [{ role: 'user', content: 'hi' }, { role: 'tool', tool_call_id: 'call_x', content: '1' }] },
    'messages[1].tool_call_id', /no earlier assistant message/],
  [{ messages: [{ role: 'user', content: 'hi' }, { role: 'tool', content: '1' }] }, 'messages[1].tool_call_id', /required/],
  [{ messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: null, tool_calls: [{ id: 'a', type: 'function', function: { name: 'get_time', arguments: '{not json' } }] }] },
    'messages[1].tool_calls[0].function.arguments', /JSON object/],
  [{ chat_template_kwargs: [1] }, 'chat_template_kwargs', /object/],
  [{ reasoning_format: 'hidden' }, 'reasoning_format', /"reasoning_content" or "none"/],
];

test('bad tools, tool_choice and tool messages: 400 in the OpenAI envelope naming the parameter', async () => {
  for (const [extra, param, msg] of BAD_INPUTS) {
    const e = await status400({ model: 'tools', messages: [{ role: 'user', content: 'hi' }], ...extra });
    assert.equal(e.param, param, JSON.stringify(extra));
    assert.equal(e.type, 'invalid_request_error');
    assert.match(e.message, msg, JSON.stringify(extra));
  }
});

test('the test hook is refused without LLORCH_TEST_HOOKS=1', async () => {
  const env = { ...process.env };
  delete env.LLORCH_TEST_HOOKS;
  const proc = spawn(BIN, ['--role=worker', '--model', synthModel(tmp.dir), '--listen', '127.0.0.1:0',
    '--test-script', path.join(tmp.dir, 'script.json')], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr.on('data', (d) => { err += d; });
  // 'close' (not 'exit'): stderr has been read to its end
  const code = await new Promise((resolve) => proc.on('close', resolve));
  assert.equal(code, 2);
  assert.match(err, /test hook.*refused unless the environment has LLORCH_TEST_HOOKS=1/);
});
