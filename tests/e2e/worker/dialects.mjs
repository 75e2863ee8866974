// Shared by the Anthropic Messages and Responses tests, against a worker
// (tests/e2e/worker) and through the orchestrator (tests/e2e/cluster): the
// model (Qwen2.5-Instruct's real template, so tool calls are Hermes-tagged
// and parsed), the scripted replies of the worker's test hook
// (--test-script, LLORCH_TEST_HOOKS=1), and the test cases themselves, run
// with the official SDKs unmodified.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.LLORCH_BIN || path.resolve(here, '../../../build/llorch');

export const QWEN25_TEMPLATE = fileURLToPath(
  new URL('../../data/chat-templates/templates/Qwen-Qwen2.5-7B-Instruct.jinja', import.meta.url));

// Entries are tried in order; the first whose match is in the prompt wins.
export const SCRIPT = [
  // the tool result is back in the prompt: the final answer
  { match: '"temperature": 18', reply: 'It is 18 degrees and clear in Paris.' },
  {
    match: 'weather in Paris',
    reply: '<think>Use the weather tool.</think>\n\n<tool_call>\n'
      + '{"name": "get_weather", "arguments": {"location": "Paris", "unit": "celsius"}}\n</tool_call>',
  },
  { match: 'think about 2+2', reply: '<think>2+2 is 4, simple.</think>\n\nThe answer is 4.' },
  { match: 'say hello', reply: 'Hello there! STOP and nothing after.' },
  { match: 'count to ten', reply: 'one two three four five six seven eight nine ten' },
];

// The tiny model with room for the tool list in its prompt, with a real template.
export function synthDialectModel(file) {
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

const WEATHER_SCHEMA = {
  type: 'object',
  properties: { location: { type: 'string' }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
  required: ['location'],
};

// ---- Anthropic Messages (@anthropic-ai/sdk) ----

const ANTHROPIC_TOOLS = [
  { name: 'get_weather', description: 'Get the current weather in a city', input_schema: WEATHER_SCHEMA },
];

// Registers the Anthropic cases; client() gives the SDK client once `before` ran.
export function anthropicTests(client, model) {
  const ask = (content, extra = {}) => ({
    model, max_tokens: 200, messages: [{ role: 'user', content }], ...extra,
  });

  test('anthropic: text answer, system prompt, usage and end_turn', async () => {
    const m = await client().messages.create(ask('Please say hello', { system: 'You are terse.' }));
    assert.equal(m.type, 'message');
    assert.equal(m.role, 'assistant');
    assert.match(m.id, /^msg_/);
    assert.equal(m.content.length, 1);
    assert.equal(m.content[0].type, 'text');
    assert.equal(m.content[0].text, 'Hello there! STOP and nothing after.');
    assert.equal(m.stop_reason, 'end_turn');
    assert.equal(m.stop_sequence, null);
    assert.ok(m.usage.input_tokens > 10);
    assert.ok(m.usage.output_tokens > 3);
  });

  test('anthropic: stop_sequences end the text with stop_reason stop_sequence', async () => {
    const m = await client().messages.create(ask('Please say hello', { stop_sequences: ['STOP'] }));
    assert.equal(m.content[0].text, 'Hello there! ');
    assert.equal(m.stop_reason, 'stop_sequence');
    assert.equal(m.stop_sequence, 'STOP');
  });

  test('anthropic: max_tokens cuts the answer with stop_reason max_tokens', async () => {
    const m = await client().messages.create(ask('Please count to ten', { max_tokens: 3 }));
    assert.equal(m.stop_reason, 'max_tokens');
    assert.equal(m.usage.output_tokens, 3);
  });

  test('anthropic: thinking comes as a thinking block before the text', async () => {
    const m = await client().messages.create(ask('Please think about 2+2'));
    assert.deepEqual(m.content.map((b) => b.type), ['thinking', 'text']);
    assert.equal(m.content[0].thinking, '2+2 is 4, simple.');
    assert.equal(m.content[1].text.trim(), 'The answer is 4.');
  });

  test('anthropic: streamed text through the SDK stream helper, events in order', async () => {
    const events = [];
    const stream = client().messages.stream(ask('Please think about 2+2'));
    stream.on('streamEvent', (e) => events.push(e));
    let text = '';
    stream.on('text', (t) => { text += t; });
    const final = await stream.finalMessage();
    assert.equal(text.trim(), 'The answer is 4.');
    assert.deepEqual(final.content.map((b) => b.type), ['thinking', 'text']);
    assert.equal(final.content[0].thinking, '2+2 is 4, simple.');
    assert.equal(final.stop_reason, 'end_turn');
    const types = events.map((e) => e.type);
    assert.equal(types[0], 'message_start');
    assert.equal(types.at(-1), 'message_stop');
    assert.equal(types.at(-2), 'message_delta');
    assert.ok(events.some((e) => e.type === 'content_block_delta' && e.delta.type === 'thinking_delta'));
    assert.ok(events.some((e) => e.type === 'content_block_delta' && e.delta.type === 'text_delta'));
    // every block that starts stops, at the same index
    const starts = events.filter((e) => e.type === 'content_block_start').map((e) => e.index);
    const stops = events.filter((e) => e.type === 'content_block_stop').map((e) => e.index);
    assert.deepEqual(starts, [0, 1]);
    assert.deepEqual(stops, [0, 1]);
    assert.ok(final.usage.input_tokens > 10);
  });

  test('anthropic: tool use round trip (tool_use -> tool_result -> answer), streamed and not', async () => {
    const q = "What's the weather in Paris?";
    const first = await client().messages.create(ask(q, { tools: ANTHROPIC_TOOLS }));
    assert.equal(first.stop_reason, 'tool_use');
    const use = first.content.find((b) => b.type === 'tool_use');
    assert.ok(use, JSON.stringify(first.content));
    assert.equal(use.name, 'get_weather');
    assert.deepEqual(use.input, { location: 'Paris', unit: 'celsius' });
    assert.ok(use.id.length > 0);
    assert.equal(first.content.filter((b) => b.type === 'text').map((b) => b.text).join(''), '');

    // the same call streamed: input_json_delta fragments, parsed by the SDK
    const stream = client().messages.stream(ask(q, { tools: ANTHROPIC_TOOLS }));
    const partial = [];
    stream.on('inputJson', (p) => partial.push(p));
    const streamed = await stream.finalMessage();
    assert.equal(streamed.stop_reason, 'tool_use');
    const suse = streamed.content.find((b) => b.type === 'tool_use');
    assert.deepEqual(suse.input, { location: 'Paris', unit: 'celsius' });
    assert.ok(partial.length >= 1);

    // the result goes back as a tool_result block
    const second = await client().messages.create({
      model, max_tokens: 200, tools: ANTHROPIC_TOOLS,
      messages: [
        { role: 'user', content: q },
        { role: 'assistant', content: first.content },
        { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: '{"temperature": 18}' }] },
      ],
    });
    assert.equal(second.stop_reason, 'end_turn');
    assert.equal(second.content.at(-1).text, 'It is 18 degrees and clear in Paris.');
  });

  test('anthropic: tool_choice any and none, disable_parallel_tool_use accepted', async () => {
    const m = await client().messages.create(ask("What's the weather in Paris?", {
      tools: ANTHROPIC_TOOLS, tool_choice: { type: 'any', disable_parallel_tool_use: true },
    }));
    assert.equal(m.stop_reason, 'tool_use');
    const n = await client().messages.create(ask("What's the weather in Paris?", {
      tools: ANTHROPIC_TOOLS, tool_choice: { type: 'none' },
    }));
    // no tools: the markup stays text
    assert.equal(n.stop_reason, 'end_turn');
    assert.match(n.content.map((b) => b.text || '').join(''), /<tool_call>/);
  });

  const bad = async (body, param) => {
    await assert.rejects(client().messages.create(body), (e) => {
      assert.equal(e.status, 400, String(e));
      assert.equal(e.error.type, 'error');
      assert.equal(e.error.error.type, 'invalid_request_error');
      assert.match(e.error.error.message, param);
      return true;
    });
  };

  test('anthropic: bad input -> 400 in Anthropic\'s error format, naming the field', async () => {
    await bad({ model, messages: [{ role: 'user', content: 'hi' }] }, /'max_tokens' is required/);
    await bad(ask([{ type: 'image', source: { type: 'base64', media_type: 'image/png', data: 'AA==' } }]),
      /messages\[0\]\.content\[0\]\.type' is "image": this model reads text only/);
    await bad(ask('hi', { tools: [{ type: 'web_search_20250305', name: 'web_search' }] }),
      /tools\[0\]\.type' is "web_search_20250305": only client tools/);
    await bad({ model, max_tokens: 10, messages: [{ role: 'system', content: 'x' }] },
      /messages\[0\]\.role/);
    await bad(ask('hi', { temperature: 7 }), /temperature/);
    await bad(ask([{ type: 'tool_result', tool_use_id: 'toolu_nope', content: 'x' }]),
      /toolu_nope/);
    await bad(ask('hi', { tool_choice: { type: 'sometimes' } }), /tool_choice\.type/);
  });

  test('anthropic: a prompt longer than the context -> 400 in Anthropic\'s format (found after tokenizing)', async () => {
    // Through the orchestrator this 400 comes from the worker and is answered again in the client's envelope.
    await bad(ask('word '.repeat(6000)), /context/);
  });
}

// ---- OpenAI Responses (openai: client.responses) ----

const RESPONSES_TOOLS = [
  { type: 'function', name: 'get_weather', description: 'Get the current weather in a city', parameters: WEATHER_SCHEMA },
];

export function responsesTests(client, model) {
  test('responses: text input, instructions, output_text and usage', async () => {
    const r = await client().responses.create({ model, input: 'Please say hello', instructions: 'Be terse.' });
    assert.equal(r.object, 'response');
    assert.match(r.id, /^resp_/);
    assert.equal(r.status, 'completed');
    assert.equal(r.output_text, 'Hello there! STOP and nothing after.');
    assert.equal(r.output.length, 1);
    assert.equal(r.output[0].type, 'message');
    assert.equal(r.output[0].content[0].type, 'output_text');
    assert.ok(r.usage.input_tokens > 10);
    assert.equal(r.usage.total_tokens, r.usage.input_tokens + r.usage.output_tokens);
  });

  test('responses: max_output_tokens -> status incomplete', async () => {
    const r = await client().responses.create({ model, input: 'Please count to ten', max_output_tokens: 3 });
    assert.equal(r.status, 'incomplete');
    assert.equal(r.incomplete_details.reason, 'max_output_tokens');
    assert.equal(r.usage.output_tokens, 3);
  });

  test('responses: reasoning item before the message', async () => {
    const r = await client().responses.create({ model, input: [{ role: 'user', content: 'Please think about 2+2' }] });
    assert.deepEqual(r.output.map((i) => i.type), ['reasoning', 'message']);
    assert.equal(r.output[0].content[0].text, '2+2 is 4, simple.');
    assert.equal(r.output_text.trim(), 'The answer is 4.');
  });

  test('responses: streamed with create({stream: true}): the event sequence', async () => {
    const stream = await client().responses.create({ model, input: 'Please think about 2+2', stream: true });
    const events = [];
    for await (const e of stream) events.push(e);
    const types = events.map((e) => e.type);
    assert.deepEqual(types.slice(0, 2), ['response.created', 'response.in_progress']);
    assert.equal(types.at(-1), 'response.completed');
    events.forEach((e, i) => assert.equal(e.sequence_number, i));
    const text = events.filter((e) => e.type === 'response.output_text.delta').map((e) => e.delta).join('');
    assert.equal(text.trim(), 'The answer is 4.');
    for (const t of ['response.output_item.added', 'response.content_part.added', 'response.output_text.done',
      'response.content_part.done', 'response.output_item.done', 'response.reasoning_text.delta'])
      assert.ok(types.includes(t), t);
    const done = events.at(-1).response;
    assert.equal(done.status, 'completed');
    assert.deepEqual(done.output.map((i) => i.type), ['reasoning', 'message']);
  });

  test('responses: function call round trip, streamed with the SDK helper and not', async () => {
    const q = "What's the weather in Paris?";
    const first = await client().responses.create({ model, input: q, tools: RESPONSES_TOOLS });
    const call = first.output.find((i) => i.type === 'function_call');
    assert.ok(call, JSON.stringify(first.output));
    assert.equal(call.name, 'get_weather');
    assert.deepEqual(JSON.parse(call.arguments), { location: 'Paris', unit: 'celsius' });
    assert.match(call.call_id, /^call_/);
    assert.equal(first.output_text, '');

    const stream = client().responses.stream({ model, input: q, tools: RESPONSES_TOOLS });
    const deltas = [];
    stream.on('response.function_call_arguments.delta', (e) => deltas.push(e.delta));
    const streamed = await stream.finalResponse();
    const scall = streamed.output.find((i) => i.type === 'function_call');
    assert.deepEqual(JSON.parse(scall.arguments), { location: 'Paris', unit: 'celsius' });
    assert.equal(deltas.join(''), scall.arguments);

    // the output goes back as input, with the function's result
    const second = await client().responses.create({
      model, tools: RESPONSES_TOOLS,
      input: [{ role: 'user', content: q }, ...first.output,
        { type: 'function_call_output', call_id: call.call_id, output: '{"temperature": 18}' }],
    });
    assert.equal(second.output_text, 'It is 18 degrees and clear in Paris.');
  });

  const bad = async (body, re, param) => {
    await assert.rejects(client().responses.create(body), (e) => {
      assert.equal(e.status, 400, String(e));
      assert.match(e.message, re);
      if (param) assert.equal(e.param, param);
      return true;
    });
  };

  test('responses: stateless and bad input -> 400 in OpenAI\'s error format, naming the field', async () => {
    await bad({ model, input: 'hi', previous_response_id: 'resp_123' }, /stateless/, 'previous_response_id');
    await bad({ model, input: 'hi', store: true }, /stateless/, 'store');
    await bad({ model, input: 'hi', tools: [{ type: 'web_search' }] }, /only function tools/, 'tools[0].type');
    await bad({ model, input: [{ type: 'computer_call_output', call_id: 'x' }] }, /input\[0\]\.type/, 'input[0].type');
    await bad({ model, input: [{ role: 'user', content: [{ type: 'input_image', image_url: 'http://127.0.0.1/x.png' }] }] },
      /reads text only/, 'input[0].content[0].type');
    await bad({ model, input: [] }, /'input' must be/, 'input');
    await bad({ model, input: [{ type: 'function_call_output', call_id: 'call_nope', output: 'x' }] }, /call_nope/);
  });

  test('responses: a prompt longer than the context -> 400 context_length_exceeded', async () => {
    await assert.rejects(client().responses.create({ model, input: 'word '.repeat(6000) }), (e) => {
      assert.equal(e.status, 400, String(e));
      assert.equal(e.code, 'context_length_exceeded');
      return true;
    });
  });
}
