// Model files shared between pools (docs/cluster-protocol.md, "Model files"),
// with real processes on loopback: the pool's file routes and their input
// errors; a model pinned to a pool without its file, which the orchestrator
// has copied there from a pool that has it (one byte corrupted in transit by
// the sender's test hook the first time: the copy must fail verification and
// be retried, never loaded); and a source killed mid-copy (the target's
// bandwidth bound makes the copy take seconds), after which the copy resumes
// from the other source.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import {
  API_KEY, CLUSTER_TOKEN, cluster, freePort, orchestratorConfig, startRole, synthModel, tempDir, waitFor,
} from './lib.mjs';

const HB_MS = 200;
const tmp = tempDir('llorch-files-e2e-');
const procs = [];
after(async () => {
  for (const p of procs.reverse()) await p.stop().catch(() => {});
  tmp.cleanup();
});

const src = path.join(tmp.dir, 'src');
mkdirSync(src);
// About 11 MiB: at 2 MiB/s a copy takes several seconds.
synthModel(src, 'share', ['--layers', '4', '--embd', '256', '--ff', '512', '--heads', '8', '--kv-heads', '4']);
const SRC_FILE = path.join(src, 'share.gguf');
const SRC_BYTES = readFileSync(SRC_FILE);
const SRC_SHA = createHash('sha256').update(SRC_BYTES).digest('hex');

function modelDir(name, withFile) {
  const d = path.join(tmp.dir, name);
  mkdirSync(d);
  if (withFile) copyFileSync(SRC_FILE, path.join(d, 'share.gguf'));
  return d;
}

async function startOrch(models) {
  const port = await freePort();
  const o = await startRole('orchestrator', orchestratorConfig(port, models, { queue: { timeout: '60s' } }),
    { dir: tmp.dir, name: `orch-${port}` });
  procs.push(o);
  o.client = new OpenAI({ baseURL: `${o.url}/v1`, apiKey: API_KEY, maxRetries: 0, timeout: 90000 });
  return o;
}

async function startPool(name, orch, dir, extra = {}, env = {}) {
  const port = await freePort();
  const p = await startRole('pool', {
    listen: `127.0.0.1:${port}`,
    log: { level: 'info', format: 'json' },
    shutdown_grace: '3s',
    pool: {
      name, cluster_token: CLUSTER_TOKEN, model_dirs: [dir], heartbeat_interval: `${HB_MS}ms`, cpu_memory: '2GiB',
      ...(orch ? { orchestrator: orch.url } : {}), ...extra,
    },
  }, { dir: tmp.dir, name, env });
  procs.push(p);
  if (orch) {
    await waitFor(`${name} registered`, async () => (await cluster(orch)).pools.some((x) => x.name === name && x.up));
  }
  return p;
}

// A raw request: node's fetch would normalise "../" in the path away.
function raw(url, method, pathname, { headers = {}, body } = {}) {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: u.hostname, port: u.port, method, path: pathname,
      headers: { Authorization: `Bearer ${CLUSTER_TOKEN}`, ...headers, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const buf = Buffer.concat(chunks);
        let json = null;
        try { json = JSON.parse(buf.toString()); } catch { /* a file body */ }
        resolve({ status: res.statusCode, headers: res.headers, buf, json });
      });
    });
    req.on('error', reject);
    if (body) req.write(typeof body === 'string' ? body : JSON.stringify(body));
    req.end();
  });
}

const sha = (file) => createHash('sha256').update(readFileSync(file)).digest('hex');
const partsIn = (dir) => readdirSync(dir).filter((f) => f.endsWith('.part'));

test('pool file routes: digest, ranges, and every wrong input named', async () => {
  const dir = modelDir('routes', true);
  writeFileSync(path.join(tmp.dir, 'outside.gguf'), 'not a model, and outside the model directory');
  symlinkSync(path.join(tmp.dir, 'outside.gguf'), path.join(dir, 'escape.gguf'));
  const p = await startPool('pool-routes', null, dir);

  let r = await raw(p.url, 'GET', '/v2/files/share.gguf/sha256');
  assert.equal(r.status, 200);
  assert.equal(r.json.sha256, SRC_SHA);
  assert.equal(r.json.size, SRC_BYTES.length);
  r = await raw(p.url, 'GET', '/v2/files/share.gguf/sha256'); // the cached digest
  assert.equal(r.json.sha256, SRC_SHA);

  r = await raw(p.url, 'GET', '/v2/files/share.gguf');
  assert.equal(r.status, 200);
  assert.ok(r.buf.equals(SRC_BYTES));
  r = await raw(p.url, 'GET', '/v2/files/share.gguf', { headers: { Range: 'bytes=1000-' } });
  assert.equal(r.status, 206);
  assert.equal(r.headers['content-range'], `bytes 1000-${SRC_BYTES.length - 1}/${SRC_BYTES.length}`);
  assert.ok(r.buf.equals(SRC_BYTES.subarray(1000)));

  r = await raw(p.url, 'GET', '/v2/files/share.gguf', { headers: { Authorization: 'Bearer wrong' } });
  assert.equal(r.status, 401);
  for (const bad of ['/v2/files/../x.gguf', '/v2/files/..%2Fx.gguf/sha256', '/v2/files/x.txt', '/v2/files/a/b.gguf']) {
    r = await raw(p.url, 'GET', bad);
    assert.equal(r.status, 400, bad);
    assert.match(r.json.error.message, /'file'/);
  }
  r = await raw(p.url, 'GET', '/v2/files/nope.gguf');
  assert.equal(r.status, 404);
  assert.match(r.json.error.message, /no model file 'nope.gguf'/);
  r = await raw(p.url, 'GET', '/v2/files/nope.gguf/sha256');
  assert.equal(r.status, 404);
  r = await raw(p.url, 'GET', '/v2/files/escape.gguf');
  assert.equal(r.status, 403);
  assert.match(r.json.error.message, /outside its model directory/);
  for (const range of ['bytes=abc', 'bytes=0-10', 'items=0-', 'bytes=-5']) {
    r = await raw(p.url, 'GET', '/v2/files/share.gguf', { headers: { Range: range } });
    assert.equal(r.status, 400, range);
    assert.match(r.json.error.message, /'Range' must be bytes=N-/);
  }
  r = await raw(p.url, 'GET', '/v2/files/share.gguf', { headers: { Range: `bytes=${SRC_BYTES.length}-` } });
  assert.equal(r.status, 416);
  assert.match(r.json.error.message, new RegExp(`has ${SRC_BYTES.length} bytes`));

  const good = { file: 'new.gguf', source_url: 'http://127.0.0.1:9', sha256: SRC_SHA, size: 1000 };
  const cases = [
    [{ ...good, file: '../x.gguf' }, 400, /'file'/],
    [{ ...good, file: 'x.bin' }, 400, /'file' must name a .gguf file/],
    [{ ...good, sha256: 'ABC' }, 400, /'sha256' must be 64 lower-case hex digits, got "ABC"/],
    [{ ...good, sha256: SRC_SHA.toUpperCase() }, 400, /'sha256'/],
    [{ ...good, size: -1 }, 400, /'size'/],
    [{ ...good, size: 'big' }, 400, /'size'/],
    [{ ...good, source_url: 'ftp://127.0.0.1/x' }, 400, /'source_url' must be/],
    [{ ...good, source_url: undefined }, 400, /'source_url' is required/],
    [{ ...good, file: 'share.gguf' }, 409, /exists on this pool already/],
    [{ ...good, size: 2 ** 52 }, 507, /not enough disk space for new.gguf in .*: needs 4503599627370496 bytes, \d+ bytes free/],
  ];
  for (const [body, status, re] of cases) {
    r = await raw(p.url, 'POST', '/v2/files/fetch', { body });
    assert.equal(r.status, status, JSON.stringify(body));
    assert.match(r.json.error.message, re);
  }
  r = await raw(p.url, 'POST', '/v2/files/fetch', { body: '{not json' });
  assert.equal(r.status, 400);
  r = await raw(p.url, 'DELETE', '/v2/files/fetch/nope.gguf');
  assert.equal(r.status, 404);
  // A source without the file: the copy is interrupted with the source's own
  // error, reported in the state document, and cancelling it leaves no part.
  r = await raw(p.url, 'POST', '/v2/files/fetch', { body: { ...good, file: 'missing.gguf', source_url: p.url, id: 'f1' } });
  assert.equal(r.status, 202);
  assert.equal(r.json.fetch.state, 'running');
  const st = await waitFor('the copy interrupted', async () => {
    const s2 = (await raw(p.url, 'GET', '/v2/state')).json;
    const f = s2.fetches.find((x) => x.file === 'missing.gguf');
    return f && f.state !== 'running' ? f : null;
  });
  assert.equal(st.state, 'interrupted');
  assert.equal(st.id, 'f1');
  assert.match(st.error, /answered 404: .*no model file 'missing.gguf' on this pool/);
  r = await raw(p.url, 'DELETE', '/v2/files/fetch/missing.gguf');
  assert.equal(r.status, 200);
  assert.equal(r.json.fetch.state, 'cancelled');
  r = await raw(p.url, 'DELETE', '/v2/files/fetch/..%2F..%2Fetc');
  assert.equal(r.status, 400);
  assert.deepEqual(partsIn(dir), []);
  await p.stop();
});

test('a model pinned to a pool without its file: copied (a corrupted first copy is retried), then served', async () => {
  const dirA = modelDir('a1', true);
  const dirB = modelDir('b1', false);
  const orch = await startOrch([{ name: 'm', file: 'share.gguf', ctx: 256, slots: 2, pins: ['pool-b1'] }]);
  // pool-a1 flips one byte of the first file body it sends (test hook).
  const a = await startPool('pool-a1', orch, dirA, {}, { LLORCH_TEST_HOOKS: '1', LLORCH_TEST_CORRUPT_SENDS: '1' });
  // Bounded so each copy runs for about a second and its progress is seen.
  const b = await startPool('pool-b1', orch, dirB, { fetch_bandwidth: '8MiB' });

  const reasons = new Set();
  let done = false;
  const watch = (async () => {
    while (!done) {
      const c = await cluster(orch).catch(() => null);
      const m = c?.models?.find((x) => x.name === 'm');
      if (m?.pending_reason) reasons.add(m.pending_reason);
      await new Promise((res) => setTimeout(res, 50));
    }
  })();
  const res = await orch.client.chat.completions.create({
    model: 'm', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4,
  });
  done = true;
  await watch;
  assert.ok(res.choices[0].message);
  assert.equal(sha(path.join(dirB, 'share.gguf')), SRC_SHA, 'the copy is the source file');
  assert.deepEqual(partsIn(dirB), [], 'no part file left');
  assert.ok(b.logs.some((l) => /verification failed: the copy .* hashes to sha256 [0-9a-f]{64}, the source's file is/.test(l)),
    'the corrupted copy failed verification');
  assert.ok(a.logs.some((l) => /test hook: flipped the byte/.test(l)));
  assert.ok([...reasons].some((r) => /^copying share.gguf to pool-b1 from pool-a1/.test(r)), [...reasons].join('\n'));
  assert.ok([...reasons].some((r) => /attempt 1 of 4 from pool-a1 failed \(verification failed/.test(r)), [...reasons].join('\n'));
  // Nothing corrupt was loaded: one worker on pool-b1, started after the verified copy.
  const c = await cluster(orch);
  const wb = c.workers.filter((w) => w.pool === 'pool-b1');
  assert.equal(wb.length, 1);
  const verifiedAt = b.logs.findIndex((l) => /verified \(sha256/.test(l));
  const spawnedAt = b.logs.findIndex((l) => /w-\d+|spawn/i.test(l) && /share/.test(l));
  assert.ok(verifiedAt >= 0 && (spawnedAt < 0 || spawnedAt > verifiedAt));
  assert.deepEqual(c.fetches, [], 'the finished copy is no longer listed');
  for (const p of [b, a, orch]) await p.stop();
});

test('the source dies mid-copy: the copy resumes from the other source', async () => {
  const dirA = modelDir('a2', true);
  const dirC = modelDir('c2', true);
  const dirB = modelDir('b2', false);
  const orch = await startOrch([{ name: 'm2', file: 'share.gguf', ctx: 256, slots: 2, pins: ['pool-b2'] }]);
  const a = await startPool('pool-a2', orch, dirA);
  const cpool = await startPool('pool-c2', orch, dirC);
  const b = await startPool('pool-b2', orch, dirB, { fetch_bandwidth: '2MiB' });
  const sources = { 'pool-a2': a, 'pool-c2': cpool };

  const pending = orch.client.chat.completions.create({
    model: 'm2', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4,
  });
  // Wait until a third of the file has moved, then kill its source.
  const f1 = await waitFor('the copy under way', async () => {
    const c = await cluster(orch);
    const f = c.fetches.find((x) => x.pool === 'pool-b2');
    return f && f.bytes_done > SRC_BYTES.length / 3 ? f : null;
  }, 30000);
  const m = (await cluster(orch)).models.find((x) => x.name === 'm2');
  assert.match(m.pending_reason, /^copying share.gguf to pool-b2 from pool-a2|^copying share.gguf to pool-b2 from pool-c2/);
  assert.match(m.pending_reason, /MiB of .*MiB \(\d+%\)/);
  assert.ok(f1.rate_bytes_per_s <= 3 * 1024 * 1024, `bounded rate, got ${f1.rate_bytes_per_s}`);
  const killed = f1.source;
  await sources[killed].stop('SIGKILL');
  const other = killed === 'pool-a2' ? 'pool-c2' : 'pool-a2';

  const f2 = await waitFor('the copy resumed from the other source', async () => {
    const c = await cluster(orch);
    const f = c.fetches.find((x) => x.pool === 'pool-b2');
    return f && f.source === other && f.attempt >= 2 ? f : null;
  }, 20000);
  assert.ok(f2.bytes_done >= f1.bytes_done / 2 || f2.state !== 'running', 'resumed, not restarted');
  const res = await pending;
  assert.ok(res.choices[0].message);
  assert.equal(sha(path.join(dirB, 'share.gguf')), SRC_SHA);
  assert.deepEqual(partsIn(dirB), []);
  assert.ok(b.logs.some((l) => /lost .* after \d+ of \d+ bytes/.test(l)), 'the loss is named');
  assert.ok(b.logs.some((l) => /copying share.gguf from .* resuming/.test(l)), 'the second attempt resumed the part');
  for (const p of [b, sources[other], orch]) await p.stop();
  assert.ok(!existsSync(path.join(dirB, '.llorch-fetch-share.gguf.part')));
});
