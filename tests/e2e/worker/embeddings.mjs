// POST /v1/embeddings through the official `openai` client
// (client.embeddings.create), the cases both the worker
// (embeddings.test.mjs) and the orchestrator (../cluster/embeddings.test.mjs)
// must pass. The models are tiny synthesized ones (embd 64) without
// pooling metadata, so llorch pools the last token.
import { test } from 'node:test';
import assert from 'node:assert/strict';

const norm = (v) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));
const close = (a, b, eps = 1e-5) => a.length === b.length && a.every((x, i) => Math.abs(x - b[i]) <= eps);

/* base64 of little-endian float32 (OpenAI's encoding) -> numbers */
export function decodeBase64(s) {
  const buf = Buffer.from(s, 'base64');
  assert.equal(buf.length % 4, 0);
  return Array.from({ length: buf.length / 4 }, (_, i) => buf.readFloatLE(4 * i));
}

// getClient(): the OpenAI client; getBase(): the server's base URL (raw
// fetches); headers(): the auth header for raw fetches; model: its name.
export function embeddingsTests(getClient, getBase, headers, model, dim = 64) {
  const post = (body) => fetch(`${getBase()}/v1/embeddings`, {
    method: 'POST', headers: { 'Content-Type': 'application/json', ...headers() }, body: JSON.stringify(body),
  });

  test('embeddings: one string, float: the shape OpenAI returns, unit length', async () => {
    const r = await getClient().embeddings.create({ model, input: 'Hello there, world', encoding_format: 'float' });
    assert.equal(r.object, 'list');
    assert.equal(r.model, model);
    assert.equal(r.data.length, 1);
    assert.equal(r.data[0].object, 'embedding');
    assert.equal(r.data[0].index, 0);
    assert.equal(r.data[0].embedding.length, dim);
    assert.ok(Math.abs(norm(r.data[0].embedding) - 1) < 1e-5);
    assert.ok(r.usage.prompt_tokens >= 3);
    assert.equal(r.usage.total_tokens, r.usage.prompt_tokens);
  });

  test('embeddings: base64 (explicit, and the client\'s default decoding) equals float', async () => {
    const input = ['a first text', 'and a second one'];
    const f = await getClient().embeddings.create({ model, input, encoding_format: 'float' });
    const b = await getClient().embeddings.create({ model, input, encoding_format: 'base64' });
    assert.equal(typeof b.data[0].embedding, 'string');
    // the client asks for base64 itself when no format is given, and decodes it
    const d = await getClient().embeddings.create({ model, input });
    for (let i = 0; i < input.length; i++) {
      const fromB64 = decodeBase64(b.data[i].embedding);
      // float numbers are the float32s' shortest text: read as float32 they
      // are exactly the values base64 carries
      const asF32 = f.data[i].embedding.map(Math.fround);
      assert.deepEqual(fromB64, asF32);
      assert.deepEqual(Array.from(d.data[i].embedding), asF32);
    }
    assert.deepEqual(b.usage, f.usage);
  });

  test('embeddings: a list of strings is batched, in order, each as if alone', async () => {
    const texts = ['red apples', 'a green pear and a banana', 'blue', 'the fourth input is longer than the others by a fair bit'];
    const all = await getClient().embeddings.create({ model, input: texts, encoding_format: 'float' });
    assert.deepEqual(all.data.map((x) => x.index), [0, 1, 2, 3]);
    let tokens = 0;
    for (const [i, t] of texts.entries()) {
      const one = await getClient().embeddings.create({ model, input: t, encoding_format: 'float' });
      assert.ok(close(one.data[0].embedding, all.data[i].embedding), `input ${i} differs when batched`);
      tokens += one.usage.prompt_tokens;
    }
    assert.equal(all.usage.prompt_tokens, tokens);
    assert.ok(!close(all.data[0].embedding, all.data[1].embedding, 1e-3));
  });

  test('embeddings: token ids, one list or a list of lists', async () => {
    const one = await getClient().embeddings.create({ model, input: [5, 17, 42, 99], encoding_format: 'float' });
    const many = await getClient().embeddings.create({ model, input: [[5, 17, 42, 99], [7, 8]], encoding_format: 'float' });
    assert.equal(one.usage.prompt_tokens, 4);
    assert.equal(many.usage.prompt_tokens, 6);
    assert.ok(close(one.data[0].embedding, many.data[0].embedding));
    assert.equal(many.data[1].embedding.length, dim);
  });

  test('embeddings: dimensions truncates and renormalises', async () => {
    const full = await getClient().embeddings.create({ model, input: 'shorter please', encoding_format: 'float' });
    const r = await getClient().embeddings.create({ model, input: 'shorter please', dimensions: 16, encoding_format: 'float' });
    const v = r.data[0].embedding;
    assert.equal(v.length, 16);
    assert.ok(Math.abs(norm(v) - 1) < 1e-5);
    const head = full.data[0].embedding.slice(0, 16);
    const n = norm(head);
    assert.ok(close(v, head.map((x) => x / n)));
  });

  test('embeddings: bad input -> 400 in OpenAI\'s error envelope, naming the field', async () => {
    const cases = [
      [{ model, input: '' }, 'input', /empty string/],
      [{ model, input: [] }, 'input', /empty list/],
      [{ model, input: ['ok', 3] }, 'input[1]', /must be a string/],
      [{ model, input: [[1, 2], [-1]] }, 'input[1][0]', /token id/],
      [{ model, input: [1, 2, 1e9] }, 'input', /vocabulary/],
      [{ model, input: 'x', encoding_format: 'int8' }, 'encoding_format', /"float" or "base64"/],
      [{ model, input: 'x', dimensions: 0 }, 'dimensions', /integer from 1/],
      [{ model, input: 'x', dimensions: dim + 1 }, 'dimensions', new RegExp(`${dim} values`)],
      [{ model, input: Array(2049).fill('x') }, 'input', /at most 2048/],
      [{ model, input: 'word '.repeat(600) }, 'input', /context/],
    ];
    for (const [body, param, re] of cases) {
      const r = await post(body);
      const j = await r.json();
      assert.equal(r.status, 400, `${JSON.stringify(body).slice(0, 80)}: ${JSON.stringify(j)}`);
      assert.equal(typeof j.error.message, 'string');
      assert.equal(j.error.type, 'invalid_request_error');
      assert.equal(j.error.param, param, j.error.message);
      assert.match(j.error.message, re);
      assert.ok('code' in j.error);
    }
    // and through the client: a BadRequestError carrying the same fields
    await assert.rejects(getClient().embeddings.create({ model, input: ['a', ''] }), (e) => {
      assert.equal(e.status, 400);
      assert.equal(e.param, 'input[1]');
      return true;
    });
  });
}
