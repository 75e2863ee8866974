#!/usr/bin/env node
// Prefix caching and decode pacing benchmark (not a test): the same
// scenarios against any OpenAI-compatible server, so llorch (worker or
// orchestrator) and llama-server are measured with one client.
//
//   node tests/e2e/worker/bench-prefix.mjs --url http://127.0.0.1:PORT --model NAME
//        --scenario multiturn|repeat|pacing [--conversations 4] [--turns 8]
//        [--system-words 330] [--reply-tokens 16] [--repeats 5]
//        [--streams 8] [--stream-tokens 96] [--arrivals 6] [--arrival-words 165]
//
// multiturn: --conversations concurrent chats, a ~1,000-token system prompt
//   (--system-words), --turns turns each; each turn's reply (greedy,
//   --reply-tokens) is appended to the history. Prints TTFT of turn 1 and of
//   turns 2..N (median, p90), and the cached share of prompt tokens from
//   usage.prompt_tokens_details.cached_tokens when the server reports it.
// repeat: the same ~1,000-token prompt --repeats times in a row; TTFT of
//   the first and the median of the others.
// pacing: --streams streams of --stream-tokens tokens start together; while
//   they run, --arrivals requests with new ~500-token prompts (max_tokens 1)
//   arrive one after another. Inter-token gaps of the streams: p50, p99, max.
// Output ends with one JSON line (key "result") for scripts.

function arg(name, def) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
}

const url = arg('url', null);
const model = arg('model', null);
const scenario = arg('scenario', 'multiturn');
if (!url || !model) {
  console.error('bench-prefix.mjs: --url and --model are required');
  process.exit(2);
}
const conversations = Number(arg('conversations', '4'));
const turns = Number(arg('turns', '8'));
const systemWords = Number(arg('system-words', '330'));
const replyTokens = Number(arg('reply-tokens', '16'));
const repeats = Number(arg('repeats', '5'));
const streams = Number(arg('streams', '8'));
const streamTokens = Number(arg('stream-tokens', '96'));
const arrivals = Number(arg('arrivals', '6'));
const arrivalWords = Number(arg('arrival-words', '165'));
const tag = arg('tag', '');

const pct = (xs, p) => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * (s.length - 1) + 0.5))];
};
const words = (n, seed) => Array.from({ length: n }, (_, i) => `w${(i * 7 + seed * 13) % 997}`).join(' ');

/* One streamed chat completion: TTFT, token arrival times, text, usage. */
async function chat(messages, maxTokens, extra = {}) {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages, max_tokens: maxTokens, temperature: 0, stream: true,
      stream_options: { include_usage: true }, ...extra }),
  });
  if (!res.ok) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  const dec = new TextDecoder();
  let buf = '', text = '', ttft = null, usage = null;
  const times = [];
  for await (const chunk of res.body) {
    buf += dec.decode(chunk, { stream: true });
    let k;
    while ((k = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, k);
      buf = buf.slice(k + 2);
      for (const line of ev.split('\n')) {
        if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
        const d = JSON.parse(line.slice(6));
        if (d.usage) usage = d.usage;
        const delta = d.choices?.[0]?.delta ?? {};
        const c = delta.content;
        /* a token: content text (the opening role chunk carries none) */
        if (typeof c === 'string' && (c !== '' || !delta.role)) {
          const t = performance.now() - t0;
          if (ttft === null) ttft = t;
          times.push(t);
          text += c;
        }
      }
    }
  }
  return { ttft, times, text, usage };
}

const cachedOf = (u) => u?.prompt_tokens_details?.cached_tokens ?? u?.prompt_tokens_cached ?? null;

async function multiturn() {
  const system = `You are a helpful assistant. ${words(systemWords, 1)}`;
  const first = [], later = [];
  let prompt = 0, cached = 0, reported = true;
  await Promise.all(Array.from({ length: conversations }, async (_, c) => {
    const msgs = [{ role: 'system', content: system }];
    for (let t = 1; t <= turns; t++) {
      msgs.push({ role: 'user', content: `conversation ${c} turn ${t}: ${words(12, c * 31 + t)}` });
      const r = await chat(msgs, replyTokens, { ignore_eos: true });
      (t === 1 ? first : later).push(r.ttft);
      if (r.usage) {
        prompt += r.usage.prompt_tokens;
        const ct = cachedOf(r.usage);
        if (ct === null) reported = false;
        else cached += ct;
      }
      msgs.push({ role: 'assistant', content: r.text });
    }
  }));
  const out = { scenario: 'multiturn', conversations, turns, ttft_turn1_p50: pct(first, 0.5),
    ttft_later_p50: pct(later, 0.5), ttft_later_p90: pct(later, 0.9), prompt_tokens: prompt,
    cached_tokens: reported ? cached : null };
  console.log(`multiturn ${tag}: ${conversations} conversations x ${turns} turns; TTFT turn 1 p50 ` +
    `${out.ttft_turn1_p50.toFixed(1)} ms; turns 2-${turns} p50 ${out.ttft_later_p50.toFixed(1)} ms, ` +
    `p90 ${out.ttft_later_p90.toFixed(1)} ms; prompt tokens ${prompt}` +
    (reported ? `, cached ${cached} (${(100 * cached / prompt).toFixed(1)}%)` : ''));
  return out;
}

async function repeat() {
  const msgs = [{ role: 'system', content: `You are a helpful assistant. ${words(systemWords, 2)}` },
    { role: 'user', content: 'Say something.' }];
  const ttfts = [];
  let usage = null;
  for (let i = 0; i < repeats; i++) {
    const r = await chat(msgs, 4, { ignore_eos: true });
    ttfts.push(r.ttft);
    usage = r.usage;
  }
  const out = { scenario: 'repeat', ttft_first: ttfts[0], ttft_repeat_p50: pct(ttfts.slice(1), 0.5),
    prompt_tokens: usage?.prompt_tokens, cached_tokens: cachedOf(usage) };
  console.log(`repeat ${tag}: prompt ${out.prompt_tokens} tokens; TTFT first ${out.ttft_first.toFixed(1)} ms, ` +
    `repeats p50 ${out.ttft_repeat_p50.toFixed(1)} ms (all: ${ttfts.map((x) => x.toFixed(0)).join(' ')})` +
    (out.cached_tokens !== null ? `; cached ${out.cached_tokens}` : ''));
  return out;
}

async function pacing() {
  let done = 0;
  const runs = Array.from({ length: streams }, (_, i) =>
    chat([{ role: 'user', content: `stream ${i}: ${words(20, 100 + i)}` }], streamTokens, { ignore_eos: true })
      .finally(() => { done++; }));
  const arrivalTtft = [];
  const arriving = (async () => {
    await new Promise((r) => setTimeout(r, 1000)); // the streams are decoding by now
    for (let a = 0; a < arrivals && done === 0; a++) {
      const r = await chat([{ role: 'user', content: `new ${a}: ${words(arrivalWords, 500 + a)}` }], 1);
      arrivalTtft.push(r.ttft);
    }
  })();
  const res = await Promise.all(runs);
  await arriving;
  const gaps = [];
  for (const r of res) for (let k = 1; k < r.times.length; k++) gaps.push(r.times[k] - r.times[k - 1]);
  const out = { scenario: 'pacing', streams, gaps: gaps.length, itl_p50: pct(gaps, 0.5), itl_p99: pct(gaps, 0.99),
    itl_max: Math.max(...gaps), arrivals: arrivalTtft.length, arrival_ttft_p50: pct(arrivalTtft, 0.5) };
  console.log(`pacing ${tag}: ${streams} streams x ${streamTokens} tokens, ${out.arrivals} new ~500-token prompts ` +
    `arrived meanwhile (TTFT p50 ${out.arrival_ttft_p50.toFixed(0)} ms); inter-token p50 ${out.itl_p50.toFixed(1)} ms, ` +
    `p99 ${out.itl_p99.toFixed(1)} ms (${(out.itl_p99 / out.itl_p50).toFixed(2)}x), max ${out.itl_max.toFixed(1)} ms`);
  return out;
}

const fn = { multiturn, repeat, pacing }[scenario];
if (!fn) {
  console.error(`bench-prefix.mjs: --scenario ${scenario}: expected multiturn, repeat or pacing`);
  process.exit(2);
}
const out = await fn();
console.log(JSON.stringify({ result: { tag, ...out } }));
