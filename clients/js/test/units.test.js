// Pure functions of rejoin.js, without a server: the delays a client takes
// from what a server (or something in front of it) says.

import assert from "node:assert/strict";
import { test } from "node:test";

import { MAX_RETRY_AFTER_SECS, restartDelayMs, retryAfterSecs } from "../src/rejoin.js";

test("any Retry-After becomes a delay from 0 to an hour, or none", () => {
  assert.equal(retryAfterSecs("2"), 2);
  assert.equal(retryAfterSecs(" 1.5 "), 1.5);
  assert.equal(retryAfterSecs("0"), 0);
  assert.equal(retryAfterSecs("-5"), 0);
  assert.equal(retryAfterSecs("1e20"), MAX_RETRY_AFTER_SECS);
  assert.equal(retryAfterSecs("99999999999999999999999"), MAX_RETRY_AFTER_SECS);
  for (const junk of ["inf", "Infinity", "-inf", "nan", "NaN", "soon", "", null, undefined]) {
    assert.equal(retryAfterSecs(junk), null, String(junk));
  }
  const now = Date.parse("2026-01-01T00:00:00Z");
  assert.equal(retryAfterSecs("Thu, 01 Jan 2026 00:00:30 GMT", now), 30);
  assert.equal(retryAfterSecs("Wed, 31 Dec 2025 23:00:00 GMT", now), 0);
  assert.equal(retryAfterSecs("Fri, 31 Dec 9999 23:59:59 GMT", now), MAX_RETRY_AFTER_SECS);
});

test("after 1012 a client waits a random 0 to 1 s", () => {
  assert.equal(restartDelayMs(() => 0), 0);
  assert.equal(restartDelayMs(() => 0.999999), 999);
  for (let i = 0; i < 100; i++) {
    const d = restartDelayMs();
    assert.ok(d >= 0 && d < 1000, String(d));
  }
});
