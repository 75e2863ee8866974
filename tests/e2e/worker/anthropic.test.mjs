// The Anthropic Messages API (POST /v1/messages) against the real worker, with the
// official @anthropic-ai/sdk unmodified. The worker replays scripted replies
// (test hook) through its scheduler, detokenizer, output parser and HTTP
// path; the cases are in dialects.mjs, shared with tests/e2e/cluster.
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import Anthropic from '@anthropic-ai/sdk';
import { tempDir, startWorker } from './helpers.mjs';
import { synthDialectModel, writeScript, anthropicTests } from './dialects.mjs';

let tmp;
let worker;
let client;

before(async () => {
  tmp = tempDir();
  const model = synthDialectModel(path.join(tmp.dir, 'dialect.gguf'));
  process.env.LLORCH_TEST_HOOKS = '1';
  worker = await startWorker({ model, args: ['--test-script', writeScript(tmp.dir), '--ctx', '4096'] });
  delete process.env.LLORCH_TEST_HOOKS;
  client = new Anthropic({ baseURL: worker.url, apiKey: 'none', maxRetries: 0 });
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

anthropicTests(() => client, 'dialect');
