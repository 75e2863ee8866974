// Prefix caching through the real worker: two workers on the same file, one
// with the cache (default) and one with --prefix-cache false, get the same
// requests; greedy token ids must be equal (repeats, shared prefixes ending
// inside and on block boundaries, concurrent sharers, a multi-turn chat that
// resends the replies), and only the cached worker reports cached tokens
// (usage.prompt_tokens_details.cached_tokens, the native end event, metrics).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

import { tempDir, synthModel, startWorker, execute } from './helpers.mjs';

let tmp, on, off;

before(async () => {
  tmp = tempDir();
  const model = synthModel(tmp.dir);
  const args = ['--slots', '4', '--ctx', '512', '--queue-max', '16'];
  on = await startWorker({ model, args });
  off = await startWorker({ model, args: [...args, '--prefix-cache', 'false'] });
});

after(async () => {
  if (on) assert.equal((await on.stop()).code, 0);
  if (off) assert.equal((await off.stop()).code, 0);
  tmp?.cleanup();
});

async function run(w, prompt, maxTokens = 16) {
  const r = await execute(w, { prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true });
  const end = r.events.find((e) => e.event === 'end');
  assert.ok(end, `no end event: ${JSON.stringify(r.body ?? r.events.slice(-2))}`);
  return { ids: r.events.filter((e) => e.event === 'token').flatMap((e) => e.data.token_ids), end: end.data };
}

const SYSTEM = 'You are a careful assistant. ' + Array.from({ length: 14 }, (_, i) => `rule ${i}: be brief.`).join(' ');

test('greedy tokens with the prefix cache equal those without it', async () => {
  // each prompt shares SYSTEM, then ends at a different length (inside a
  // block, on a boundary, one token past it); each is sent twice (a repeat)
  const tails = ['', ' A', ' A question', ' A question about the weather in spring?', ' x y z w v u t s r q p o n m'];
  let cachedOn = 0;
  for (const t of tails) {
    for (let k = 0; k < 2; k++) {
      const a = await run(on, SYSTEM + t), b = await run(off, SYSTEM + t);
      assert.deepEqual(a.ids, b.ids, `tail '${t}' (send ${k}) differs with the cache`);
      assert.equal(b.end.cached_tokens, 0);
      assert.ok(a.end.cached_tokens < a.end.prompt_tokens);
      cachedOn += a.end.cached_tokens;
    }
  }
  assert.ok(cachedOn > 0, 'nothing came from the cache');
});

test('concurrent sharers of a cached prefix get the tokens they get alone', async () => {
  await run(on, SYSTEM + ' warm');
  const prompts = Array.from({ length: 6 }, (_, i) => `${SYSTEM} request ${i}: ${'word '.repeat(i * 3)}`);
  const together = await Promise.all(prompts.map((p) => run(on, p, 24)));
  for (let i = 0; i < prompts.length; i++) {
    const alone = await run(off, prompts[i], 24);
    assert.deepEqual(together[i].ids, alone.ids, `request ${i} differs`);
    assert.ok(together[i].end.cached_tokens > 0, `request ${i} found nothing cached`);
  }
});

test('a multi-turn chat resending its replies: same replies, later turns mostly cached (OpenAI client)', async () => {
  const client = (w) => new OpenAI({ baseURL: `${w.url}/v1`, apiKey: 'none', maxRetries: 0 });
  const conv = { on: [{ role: 'system', content: SYSTEM }], off: [{ role: 'system', content: SYSTEM }] };
  for (let turn = 1; turn <= 4; turn++) {
    const res = {};
    for (const [name, w] of [['on', on], ['off', off]]) {
      conv[name].push({ role: 'user', content: `turn ${turn}: tell me more` });
      const r = await client(w).chat.completions.create({ model: 'tiny', messages: conv[name], max_tokens: 12, temperature: 0 });
      conv[name].push({ role: 'assistant', content: r.choices[0].message.content });
      res[name] = r;
    }
    assert.equal(res.on.choices[0].message.content, res.off.choices[0].message.content, `turn ${turn}`);
    assert.equal(res.on.usage.prompt_tokens, res.off.usage.prompt_tokens);
    assert.equal(res.off.usage.prompt_tokens_details.cached_tokens, 0);
    if (turn > 1) {
      const u = res.on.usage;
      assert.ok(u.prompt_tokens_details.cached_tokens >= u.prompt_tokens / 2,
        `turn ${turn}: only ${u.prompt_tokens_details.cached_tokens} of ${u.prompt_tokens} cached`);
    }
  }
  const m = await (await fetch(`${on.url}/metrics`)).text();
  const val = (name) => Number(m.match(new RegExp(`^${name} (\\S+)$`, 'm'))?.[1]);
  assert.ok(val('llorch_worker_prefix_cache_hit_tokens_total') > 0);
  assert.ok(val('llorch_worker_prefix_cache_query_tokens_total') >= val('llorch_worker_prefix_cache_hit_tokens_total'));
  assert.ok(val('llorch_worker_kv_blocks_total') > 0);
  assert.equal(val('llorch_worker_kv_blocks_used'), 0);
  assert.ok(val('llorch_worker_kv_blocks_cached') > 0);
  assert.equal(val('llorch_worker_preemptions_total'), 0);
});
