// Property test of structured outputs: random schemas (schemagen.mjs,
// seeded), random-weight sampling at temperature 1, and every complete
// output must parse and validate with ajv (draft 2020-12, ajv-formats).
//  - bulk: tests/unit/grammar/grammar_sample masks random logits with each
//    schema's grammar over a real synthetic vocabulary (thousands of outputs
//    in a few seconds);
//  - through the worker: the real `llorch --role=worker` with a random-weight
//    model, response_format json_schema with strict true.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { makeSchema } from './schemagen.mjs';
import { BIN, tempDir, synthModel, startWorker } from '../worker/helpers.mjs';

const SAMPLE = process.env.LLORCH_GRAMMAR_SAMPLE;
let tmp;
before(() => { tmp = tempDir(); });
after(() => tmp.cleanup());

function validator() {
  const ajv = new Ajv2020({ strict: false, allErrors: false });
  addFormats(ajv);
  return ajv;
}

// Checks every finished output; returns counts. Failures name the schema.
function check(ajv, schemas, outputs) {
  let stop = 0, length = 0;
  const bad = [];
  for (const o of outputs) {
    if (o.error) { bad.push(`schema ${o.schema} did not compile: ${o.error}`); continue; }
    if (o.finish !== 'stop') { length++; continue; }
    stop++;
    let v;
    try { v = JSON.parse(o.text); } catch { bad.push(`schema ${o.schema}: not JSON: ${o.text}`); continue; }
    if (!ajv.validate(schemas[o.schema], v))
      bad.push(`schema ${JSON.stringify(schemas[o.schema])}: ${o.text}: ${JSON.stringify(ajv.errors)}`);
  }
  return { stop, length, bad };
}

function bulk(model, nSchemas, perSchema, seed) {
  const schemas = [];
  for (let i = 0; i < nSchemas; i++) schemas.push(makeSchema(seed * 100000 + i));
  const file = path.join(tmp.dir, `schemas-${seed}.jsonl`);
  writeFileSync(file, schemas.map((s) => JSON.stringify(s)).join('\n') + '\n');
  const out = execFileSync(SAMPLE, [model, file, String(perSchema), String(seed), '500'],
    { maxBuffer: 256 << 20 }).toString();
  return { schemas, outputs: out.trim().split('\n').map((l) => JSON.parse(l)) };
}

test('bulk: thousands of random-schema outputs all parse and validate', { skip: !SAMPLE && 'LLORCH_GRAMMAR_SAMPLE not set (ctest sets it)' }, () => {
  const ajv = validator();
  const small = synthModel(tmp.dir, 'tiny');
  let total = 0, finished = 0;
  for (const [model, n, per, seed] of [[small, 300, 8, 1], [small, 300, 4, 2]]) {
    const { schemas, outputs } = bulk(model, n, per, seed);
    const r = check(ajv, schemas, outputs);
    assert.deepEqual(r.bad.slice(0, 5), [], `${r.bad.length} invalid outputs`);
    assert.equal(outputs.length, n * per);
    total += outputs.length;
    finished += r.stop;
  }
  // the budget ends only outputs that ramble in unbounded extra keys
  assert.ok(finished >= total * 0.95, `${finished} of ${total} finished`);
  console.log(`# bulk: ${finished} of ${total} outputs finished, all valid`);
});

test('worker: random schemas through response_format json_schema (strict) validate', async () => {
  const ajv = validator();
  const model = synthModel(tmp.dir, 'tiny');
  const w = await startWorker({ model, args: ['--slots', '4', '--ctx', '1024'] });
  try {
    const schemas = [];
    for (let i = 0; i < 60; i++) schemas.push(makeSchema(900000 + i));
    const outputs = [];
    let next = 0;
    const runOne = async () => {
      while (next < schemas.length * 3) {
        const k = next++;
        const i = k % schemas.length;
        const r = await fetch(`${w.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({
            messages: [{ role: 'user', content: `Make object ${k}` }], temperature: 1, seed: k,
            max_tokens: 400,
            response_format: { type: 'json_schema', json_schema: { name: `s${i}`, strict: true, schema: schemas[i] } },
          }),
        });
        const body = await r.json();
        assert.equal(r.status, 200, JSON.stringify(body));
        outputs.push({ schema: i, finish: body.choices[0].finish_reason, text: body.choices[0].message.content });
      }
    };
    await Promise.all([runOne(), runOne(), runOne(), runOne()]);
    const r = check(ajv, schemas, outputs);
    assert.deepEqual(r.bad.slice(0, 5), [], `${r.bad.length} invalid outputs`);
    assert.ok(r.stop >= outputs.length * 0.9, `${r.stop} of ${outputs.length} finished`);
    console.log(`# worker: ${r.stop} of ${outputs.length} outputs finished, all valid`);
  } finally {
    await w.stop();
  }
});
