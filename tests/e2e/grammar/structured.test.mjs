// Structured outputs through the official openai client, against a worker
// and through the orchestrator (--role=all), streaming and not; the SDK's
// zod parse helper; llama-server's `grammar` field; and bad input -> 400
// naming the parameter.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { zodResponseFormat } from 'openai/helpers/zod';
import { z } from 'zod';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { tempDir, synthModel, startWorker } from '../worker/helpers.mjs';
import { startRole, freePort, waitFor, API_KEY } from '../cluster/lib.mjs';

const ajv = new Ajv2020({ strict: false });
addFormats(ajv);

const PERSON = {
  type: 'object',
  properties: {
    name: { type: 'string', maxLength: 12 },
    age: { type: 'integer', minimum: 0, maximum: 120 },
    email: { type: 'string', format: 'email' },
    tags: { type: 'array', items: { enum: ['a', 'b', 'c'] }, maxItems: 3 },
    address: {
      type: 'object',
      properties: { city: { type: 'string', maxLength: 10 }, zip: { type: 'string', pattern: '^[0-9]{5}$' } },
      required: ['city', 'zip'],
      additionalProperties: false,
    },
    nickname: { type: ['string', 'null'], maxLength: 6 },
  },
  required: ['name', 'age', 'address', 'nickname'],
  additionalProperties: false,
};
const FORMAT = { type: 'json_schema', json_schema: { name: 'person', strict: true, schema: PERSON } };

let tmp, worker, all;
const targets = {};

before(async () => {
  tmp = tempDir();
  const model = synthModel(tmp.dir, 'tiny');
  worker = await startWorker({ model, args: ['--slots', '2', '--ctx', '1024'] });
  const port = await freePort();
  all = await startRole('all', {
    listen: `127.0.0.1:${port}`,
    log: { level: 'info', format: 'json' },
    shutdown_grace: '3s',
    pool: { model_dirs: [tmp.dir], heartbeat_interval: '200ms', cpu_memory: '2GiB' },
    orchestrator: {
      api_keys: [API_KEY],
      models: [{ name: 'demo', file: 'tiny.gguf', ctx: 1024, slots: 2, keep_alive: -1 }],
    },
  }, { dir: tmp.dir, name: 'all' });
  await waitFor('local pool up', async () => (await fetch(`${all.url}/health/ready`)).status === 200, 20000);
  targets.worker = { url: worker.url, model: 'tiny', key: 'none' };
  targets.orchestrator = { url: all.url, model: 'demo', key: API_KEY };
});

after(async () => {
  await worker?.stop();
  await all?.stop();
  tmp?.cleanup();
});

const client = (t) => new OpenAI({ baseURL: `${t.url}/v1`, apiKey: t.key, maxRetries: 0, timeout: 120000 });

for (const role of ['worker', 'orchestrator']) {
  test(`${role}: response_format json_schema, not streaming`, async () => {
    const t = targets[role];
    for (let seed = 0; seed < 6; seed++) {
      const r = await client(t).chat.completions.create({
        model: t.model, messages: [{ role: 'user', content: 'A person please' }],
        temperature: 1, seed, max_tokens: 400, response_format: FORMAT,
      });
      assert.equal(r.choices[0].finish_reason, 'stop');
      const v = JSON.parse(r.choices[0].message.content);
      assert.ok(ajv.validate(PERSON, v), JSON.stringify(ajv.errors));
    }
  });

  test(`${role}: response_format json_schema, streaming`, async () => {
    const t = targets[role];
    for (let seed = 0; seed < 4; seed++) {
      const stream = await client(t).chat.completions.create({
        model: t.model, messages: [{ role: 'user', content: 'A person please' }],
        temperature: 1, seed, max_tokens: 400, response_format: FORMAT, stream: true,
      });
      let text = '', finish = null;
      for await (const c of stream) {
        text += c.choices[0]?.delta?.content ?? '';
        finish = c.choices[0]?.finish_reason ?? finish;
      }
      assert.equal(finish, 'stop');
      assert.ok(ajv.validate(PERSON, JSON.parse(text)), JSON.stringify(ajv.errors));
    }
  });

  test(`${role}: the SDK's zod parse helper`, async () => {
    const t = targets[role];
    const Item = z.object({
      title: z.string().max(10),
      count: z.number().int(),
      done: z.boolean(),
      kind: z.enum(['x', 'y']),
      sub: z.array(z.object({ id: z.number().int() })).max(2),
    });
    const r = await client(t).chat.completions.parse({
      model: t.model, messages: [{ role: 'user', content: 'An item' }], temperature: 1, max_tokens: 400,
      response_format: zodResponseFormat(Item, 'item'),
    });
    const parsed = r.choices[0].message.parsed;
    assert.ok(parsed);
    assert.deepEqual(Item.parse(parsed), parsed);
  });

  test(`${role}: json_object and GBNF grammar (chat and completions)`, async () => {
    const t = targets[role];
    const c = client(t);
    const r = await c.chat.completions.create({
      model: t.model, messages: [{ role: 'user', content: 'json' }], temperature: 1, max_tokens: 300,
      response_format: { type: 'json_object' },
    });
    if (r.choices[0].finish_reason === 'stop') {
      const v = JSON.parse(r.choices[0].message.content);
      assert.equal(typeof v, 'object');
      assert.ok(v && !Array.isArray(v));
    }
    const grammar = 'root ::= answer " " num\nanswer ::= "yes" | "no"\nnum ::= [1-9] [0-9]{0,2}';
    for (let seed = 0; seed < 5; seed++) {
      const g = await c.completions.create({
        model: t.model, prompt: 'Answer:', temperature: 1, seed, max_tokens: 20, grammar,
      });
      assert.match(g.choices[0].text, /^(yes|no) [1-9][0-9]{0,2}$/);
      assert.equal(g.choices[0].finish_reason, 'stop');
    }
    const s = await c.chat.completions.create({
      model: t.model, messages: [{ role: 'user', content: 'x' }], temperature: 1, max_tokens: 20,
      grammar, stream: true,
    });
    let text = '';
    for await (const ch of s) text += ch.choices[0]?.delta?.content ?? '';
    assert.match(text, /^(yes|no) [1-9][0-9]{0,2}$/);
  });

  test(`${role}: max_tokens reached mid-output ends with finish_reason length`, async () => {
    const t = targets[role];
    const r = await client(t).chat.completions.create({
      model: t.model, messages: [{ role: 'user', content: 'A person please' }],
      temperature: 1, max_tokens: 3, response_format: FORMAT,
    });
    assert.equal(r.choices[0].finish_reason, 'length');
    assert.throws(() => JSON.parse(r.choices[0].message.content));
  });

  test(`${role}: bad structured-output input is a 400 naming the parameter`, async () => {
    const t = targets[role];
    const post = async (extra) => {
      const r = await fetch(`${t.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${t.key}` },
        body: JSON.stringify({ model: t.model, messages: [{ role: 'user', content: 'x' }], max_tokens: 5, ...extra }),
      });
      return { status: r.status, headers: r.headers, body: await r.json() };
    };
    const cases = [
      [{ response_format: { type: 'json_schema', json_schema: { name: 'x', schema: 'nope' } } },
        'response_format.json_schema.schema', /JSON Schema object/],
      [{ response_format: { type: 'json_schema', json_schema: { name: 'x', strict: true,
        schema: { type: 'object', properties: { a: { type: 'string', minProperties: 1 } } } } } },
      'response_format.json_schema.schema', /unsupported keyword 'minProperties' at \/properties\/a/],
      [{ response_format: { type: 'json_schema', json_schema: { name: 'x',
        schema: { type: 'string', minLength: 5, maxLength: 2 } } } },
      'response_format.json_schema.schema', /can match nothing/],
      [{ response_format: { type: 'xml' } }, 'response_format.type', /one of text, json_object, json_schema/],
      [{ response_format: { type: 'json_schema' } }, 'response_format.json_schema', /is required/],
      [{ grammar: 'root ::= "a"\nfoo ::= [a-' }, 'grammar', /line 2, column 9: unterminated character class/],
      [{ grammar: 'root ::= bar' }, 'grammar', /line 1, column 10: rule 'bar' is used but not defined/],
      [{ grammar: 'root ::= "a"{0,200000}' }, 'grammar', /more than 100000 rules/],
      [{ grammar: 'root ::= "a"', response_format: { type: 'json_object' } }, 'grammar', /cannot be combined/],
    ];
    for (const [extra, param, msg] of cases) {
      const r = await post(extra);
      assert.equal(r.status, 400, JSON.stringify(r.body));
      assert.equal(r.body.error.param, param, JSON.stringify(r.body));
      assert.match(r.body.error.message, msg);
    }
    // not strict: ignored, with a warning header
    const r = await post({ response_format: { type: 'json_schema', json_schema: { name: 'x',
      schema: { type: 'object', minProperties: 1 } } } });
    assert.equal(r.status, 200);
    assert.match(r.headers.get('x-llorch-warning'), /'minProperties' at \//);
  });
}
