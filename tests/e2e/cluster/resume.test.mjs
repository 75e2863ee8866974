// Resumable streams through the orchestrator (--role=all, one real worker
// on a synthesized model slow enough that a stream lasts a while): with
// X-Llorch-Resumable: true a dropped client comes back with
// GET /v2/streams/{id} + Last-Event-ID and gets the rest of the same
// generation (the concatenated text equals an uninterrupted greedy run);
// nobody coming back within orchestrator.resume.window, or a full buffer
// while nobody reads, stops the generation; bad headers are 400s.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { mkdirSync } from 'node:fs';
import { ADMIN_KEY, API_KEY, freePort, sleep, startRole, tempDir, waitFor } from './lib.mjs';
import { readSSE, synthSlowModel } from '../worker/helpers.mjs';

let tmp, all, models;
const OTHER_KEY = 'another-client-of-this-cluster';

// --role=all with the slow model and the given resume options.
async function startAll(name, resume) {
  const port = await freePort();
  const p = await startRole('all', {
    listen: `127.0.0.1:${port}`,
    log: { level: 'info', format: 'json' },
    shutdown_grace: '3s',
    pool: { model_dirs: [models], heartbeat_interval: '300ms', cpu_memory: '2GiB' },
    orchestrator: {
      api_keys: [API_KEY, OTHER_KEY],
      admin_keys: [ADMIN_KEY],
      resume,
      models: [{ name: 'slow', file: 'slow.gguf', ctx: 1024, slots: 2, keep_alive: -1 }],
    },
  }, { dir: tmp.dir, name });
  await waitFor('local pool up', async () => (await fetch(`${p.url}/health/ready`)).status === 200);
  return p;
}

before(async () => {
  tmp = tempDir('llorch-resume-e2e-');
  models = path.join(tmp.dir, 'models');
  mkdirSync(models, { recursive: true });
  synthSlowModel(models);
  // a short window (the expiry test), a buffer that holds a 300-token stream
  all = await startAll('all', { window: '1s', max_stream_bytes: '256KiB' });
});

after(async () => {
  if (all) await all.stop();
  tmp?.cleanup();
});

async function outcomes(p = all) {
  const text = await (await fetch(`${p.url}/metrics`, { headers: { Authorization: `Bearer ${ADMIN_KEY}` } })).text();
  const get = (o) => Number(new RegExp(`llorch_orch_requests_total\\{outcome="${o}"\\} (\\d+)`).exec(text)?.[1] ?? 0);
  return { completed: get('completed'), cancelled: get('cancelled') };
}

const textOf = (events) => events.filter((e) => e.data !== '[DONE]').map((e) => e.data)
  .filter((d) => d.choices?.length).map((d) => d.choices[0].text ?? '').join('');

function post(body, headers = {}, signal, p = all) {
  return fetch(`${p.url}/v1/completions`, {
    method: 'POST', signal,
    headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
}

function resume(id, lastEventId, p = all, key = API_KEY) {
  const headers = { Authorization: `Bearer ${key}` };
  if (lastEventId !== undefined) headers['Last-Event-ID'] = String(lastEventId);
  return fetch(`${p.url}/v2/streams/${id}`, { headers });
}

const BODY = { model: 'slow', prompt: 'Once upon a time', max_tokens: 300, temperature: 0, ignore_eos: true, stream: true };

test('a dropped resumable stream, resumed with Last-Event-ID, equals an uninterrupted greedy run', async () => {
  const ref = await readSSE(await post(BODY));
  assert.equal(ref.at(-1).data, '[DONE]');
  const refText = textOf(ref);
  assert.ok(refText.length > 0);

  const before = await outcomes();
  const ac = new AbortController();
  const first = await post(BODY, { 'X-Llorch-Resumable': 'true' }, ac.signal);
  assert.equal(first.status, 200);
  const id = first.headers.get('x-llorch-stream-id');
  assert.match(id, /^cmpl-/);
  // drop the connection after a few text events
  const head = await readSSE(first, (ev, evs) => evs.filter((e) => textOf([e]).length).length >= 5);
  ac.abort();
  assert.deepEqual(head.map((e) => e.id), head.map((_, i) => i + 1), 'events are numbered from 1');
  const lastId = head.at(-1).id;
  await sleep(150); // the generation goes on meanwhile

  const again = await resume(id, lastId);
  assert.equal(again.status, 200);
  assert.equal(again.headers.get('x-llorch-stream-id'), id);
  const rest = await readSSE(again);
  assert.equal(rest.at(-1).data, '[DONE]');
  assert.deepEqual(rest.map((e) => e.id), rest.map((_, i) => lastId + 1 + i), 'the events after Last-Event-ID, in order');
  assert.equal(textOf(head) + textOf(rest), refText);
  // an ended stream stays fetchable for the window (1 s here): all of it again, from the start
  const whole = await readSSE(await resume(id));
  assert.equal(textOf(whole), refText);
  // it was resumed while still generating (the record attached the new client)
  await waitFor('the resume logged', async () => all.logs.some((l) => l.includes(`resumable stream ${id}: resumed after event ${lastId}`)), 3000)
    .catch(() => assert.fail('the stream had already ended when the client came back'));
  // the same generation, completed, not cancelled and restarted
  await waitFor('outcome counted', async () => (await outcomes()).completed === before.completed + 1);
  assert.equal((await outcomes()).cancelled, before.cancelled);
});

test('a resumable chat stream with n=2 resumes every choice', async () => {
  const body = { model: 'slow', messages: [{ role: 'user', content: 'Tell me a story.' }], max_tokens: 60,
    temperature: 0, stream: true, n: 2 };
  const chat = (b, headers, signal) => fetch(`${all.url}/v1/chat/completions`, {
    method: 'POST', signal,
    headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json', ...headers },
    body: JSON.stringify(b),
  });
  const perChoice = (events) => {
    const t = ['', ''];
    for (const e of events) {
      if (e.data === '[DONE]') continue;
      for (const c of e.data.choices ?? []) t[c.index] += c.delta?.content ?? '';
    }
    return t;
  };
  const ref = perChoice(await readSSE(await chat(body, {})));
  assert.equal(ref[0], ref[1]);
  const ac = new AbortController();
  const first = await chat(body, { 'X-Llorch-Resumable': 'true' }, ac.signal);
  const id = first.headers.get('x-llorch-stream-id');
  assert.match(id, /^chatcmpl-/);
  const head = await readSSE(first, (ev, evs) => evs.length >= 8);
  ac.abort();
  const rest = await readSSE(await resume(id, head.at(-1).id));
  assert.equal(rest.at(-1).data, '[DONE]');
  const got = perChoice([...head, ...rest]);
  assert.deepEqual(got, ref);
});

test('nobody back within orchestrator.resume.window: the generation is cancelled and the id forgotten', async () => {
  const before = await outcomes();
  const ac = new AbortController();
  const res = await post({ ...BODY, max_tokens: 1000 }, { 'X-Llorch-Resumable': 'true' }, ac.signal);
  const id = res.headers.get('x-llorch-stream-id');
  await readSSE(res, (ev, evs) => evs.length >= 3);
  ac.abort();
  // the window is 1 s; 1000 tokens take longer on this model
  await waitFor('generation cancelled', async () => (await outcomes()).cancelled === before.cancelled + 1, 10000);
  await waitFor('stream forgotten', async () => (await resume(id)).status === 404, 5000);
  const r = await resume(id);
  const e = (await r.json()).error;
  assert.equal(e.code, 'stream_not_found');
});

test('a full buffer with the client away stops the generation; the reconnect gets what was kept and an error', async () => {
  // a long window, and a buffer of a few events: it fills long before the window ends
  const small = await startAll('small', { window: '60s', max_stream_bytes: '4KiB' });
  try {
    const before = await outcomes(small);
    const ac = new AbortController();
    const res = await post({ ...BODY, max_tokens: 1000 }, { 'X-Llorch-Resumable': 'true' }, ac.signal, small);
    const id = res.headers.get('x-llorch-stream-id');
    const head = await readSSE(res, (ev, evs) => evs.length >= 2);
    ac.abort();
    await waitFor('generation stopped', async () => (await outcomes(small)).cancelled === before.cancelled + 1, 20000);
    const rest = await readSSE(await resume(id, head.at(-1).id, small));
    assert.ok(rest.length >= 2, `events after the reconnect: ${JSON.stringify(rest)}`);
    assert.equal(rest.at(-1).data, '[DONE]');
    const err = rest.at(-2).data.error;
    assert.equal(err.code, 'resume_buffer_full');
    // what was kept came first, numbered on from Last-Event-ID
    assert.ok(rest.length > 4, `kept events before the error: ${rest.length}`);
    assert.equal(rest[0].id, head.at(-1).id + 1);
  } finally {
    await small.stop();
  }
});

test('without the header a disconnect cancels as before, and there is no stream to resume', async () => {
  const before = await outcomes();
  const ac = new AbortController();
  const res = await post({ ...BODY, max_tokens: 1000 }, {}, ac.signal);
  assert.equal(res.headers.get('x-llorch-stream-id'), null);
  await readSSE(res, (ev, evs) => evs.length >= 3);
  ac.abort();
  await waitFor('generation cancelled', async () => (await outcomes()).cancelled === before.cancelled + 1, 5000);
  assert.equal((await resume('cmpl-00000000000000000000000000000000')).status, 404);
});

test('bad resumable requests are 400s naming the header', async () => {
  let r = await post(BODY, { 'X-Llorch-Resumable': 'yes' });
  assert.equal(r.status, 400);
  assert.equal((await r.json()).error.param, 'X-Llorch-Resumable');
  r = await post({ ...BODY, stream: false }, { 'X-Llorch-Resumable': 'true' });
  assert.equal(r.status, 400);
  assert.match((await r.json()).error.message, /stream/);
  // Last-Event-ID must be a number within the stream
  const done = await post({ ...BODY, max_tokens: 3 }, { 'X-Llorch-Resumable': 'true' });
  const id = done.headers.get('x-llorch-stream-id');
  const evs = await readSSE(done);
  r = await resume(id, 'abc');
  assert.equal(r.status, 400);
  assert.equal((await r.json()).error.param, 'Last-Event-ID');
  r = await resume(id, evs.at(-1).id + 5);
  assert.equal(r.status, 400);
});

test('a stream is resumable only with the client key that opened it', async () => {
  const done = await post({ ...BODY, max_tokens: 3 }, { 'X-Llorch-Resumable': 'true' });
  const id = done.headers.get('x-llorch-stream-id');
  const evs = await readSSE(done);
  assert.equal(evs.at(-1).data, '[DONE]');
  // another valid client key: as unknown as a wrong id
  const r = await resume(id, undefined, all, OTHER_KEY);
  assert.equal(r.status, 404);
  assert.equal((await r.json()).error.code, 'stream_not_found');
  // the same key, sent as x-api-key this time: the stream
  const mine = await fetch(`${all.url}/v2/streams/${id}`, { headers: { 'x-api-key': API_KEY } });
  assert.equal(mine.status, 200);
  assert.equal(textOf(await readSSE(mine)), textOf(evs));
});
