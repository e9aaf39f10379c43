// Unit tests of the client's backoff schedule and send-queue bound, with an
// injected random source. The schedule is also checked end to end against
// a loopback port nothing listens on, so every attempt really fails.

import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";

import { backoffDelay, DEFAULTS, RoomcastClient, SendQueue } from "../client.js";
import { closedPort, Recorder } from "./support.js";

// Just below 1: the top of each jitter range.
const TOP = () => 1 - Number.EPSILON;

test("the ceiling doubles from the base up to the cap", () => {
  const delays = [1, 2, 3, 4, 5, 6, 7, 8, 9].map((n) => backoffDelay(n, 500, 30000, TOP));
  assert.deepEqual(delays, [499, 999, 1999, 3999, 7999, 15999, 29999, 29999, 29999]);
});

test("defaults: 500 ms base, 30 s cap, no retry limit", () => {
  assert.equal(DEFAULTS.backoffBaseMs, 500);
  assert.equal(DEFAULTS.backoffMaxMs, 30000);
  assert.equal(DEFAULTS.maxRetries, Infinity);
  const { backoffBaseMs: base, backoffMaxMs: max } = DEFAULTS;
  assert.equal(backoffDelay(1, base, max, TOP), 499);
  assert.equal(backoffDelay(7, base, max, TOP), 29999);
});

test("full jitter: the delay is random() times the ceiling", () => {
  assert.equal(
    backoffDelay(1, 500, 30000, () => 0),
    0,
  );
  assert.equal(
    backoffDelay(3, 500, 30000, () => 0.5),
    1000,
  );
  assert.equal(
    backoffDelay(4, 500, 30000, () => 0.25),
    1000,
  );
  assert.equal(
    backoffDelay(20, 500, 30000, () => 0.5),
    15000,
  );
});

test("jitter covers the whole range evenly (seeded generator)", () => {
  // mulberry32: a small deterministic generator, so the check is exact
  // every run.
  let seed = 0x2f6fde;
  const random = () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const buckets = new Array(10).fill(0);
  const n = 20000;
  for (let i = 0; i < n; i++) {
    const d = backoffDelay(3, 500, 30000, random);
    assert.ok(d >= 0 && d < 2000, `delay ${d} outside [0, 2000)`);
    buckets[Math.floor(d / 200)] += 1;
  }
  for (const count of buckets) {
    assert.ok(Math.abs(count - n / 10) < n / 50, `uneven buckets: ${buckets}`);
  }
});

test("huge attempt numbers and a zero base stay finite", () => {
  assert.equal(backoffDelay(5000, 500, 30000, TOP), 29999);
  assert.equal(backoffDelay(Number.MAX_SAFE_INTEGER, 1, 30000, TOP), 29999);
  assert.equal(backoffDelay(10, 0, 30000, TOP), 0);
  assert.equal(backoffDelay(0, 500, 30000, TOP), 499, "attempt 0 counts as the first");
});

test("the queue keeps the newest `limit` items and returns each dropped one", () => {
  const q = new SendQueue(3);
  assert.equal(q.push("a"), undefined);
  assert.equal(q.push("b"), undefined);
  assert.equal(q.push("c"), undefined);
  assert.equal(q.length, 3);
  assert.equal(q.push("d"), "a");
  assert.equal(q.push("e"), "b");
  assert.equal(q.length, 3);
  assert.deepEqual(q.drain(), ["c", "d", "e"]);
  assert.equal(q.length, 0);
  assert.deepEqual(q.drain(), []);
});

test("a queue of limit 0 keeps nothing; bad limits are refused", () => {
  const q = new SendQueue(0);
  assert.equal(q.push("x"), "x");
  assert.equal(q.length, 0);
  assert.throws(() => new SendQueue(-1), RangeError);
  assert.throws(() => new SendQueue(1.5), RangeError);
});

test("the queue stays bounded over many pushes", () => {
  const q = new SendQueue(100);
  let dropped = 0;
  for (let i = 0; i < 100000; i++) if (q.push(i) !== undefined) dropped += 1;
  assert.equal(q.length, 100);
  assert.equal(dropped, 100000 - 100);
  assert.deepEqual(
    q.drain(),
    Array.from({ length: 100 }, (_, i) => 99900 + i),
  );
});

test("sends while disconnected are queued up to maxQueue, oldest dropped with an event", async () => {
  const port = await closedPort();
  const client = new RoomcastClient(`ws://127.0.0.1:${port}/`, {
    WebSocket,
    maxQueue: 2,
    backoffBaseMs: 1000,
  });
  const rec = new Recorder(client);
  try {
    assert.equal(client.send("one"), false);
    assert.equal(client.send("two"), false);
    assert.equal(client.queued, 2);
    assert.equal(rec.of("dropped").length, 0);
    assert.equal(client.send("three"), false);
    assert.equal(client.sendJson({ type: "custom" }), false);
    assert.equal(client.queued, 2);
    const dropped = rec.of("dropped").map((e) => e.detail);
    assert.deepEqual(dropped, [
      { value: { type: "message", text: "one" }, reason: "queue full" },
      { value: { type: "message", text: "two" }, reason: "queue full" },
    ]);
  } finally {
    client.close();
  }
});

test("the client follows the schedule against a port that refuses, up to maxRetries", async () => {
  const port = await closedPort();
  const client = new RoomcastClient(`ws://127.0.0.1:${port}/`, {
    WebSocket,
    random: () => 0.5,
    backoffBaseMs: 20,
    backoffMaxMs: 100,
    maxRetries: 6,
  });
  const rec = new Recorder(client);
  const last = await rec.next("close", (c) => !c.willReconnect, { from: 0 });
  const attempts = rec.of("reconnecting").map((e) => [e.detail.attempt, e.detail.delay]);
  assert.deepEqual(attempts, [
    [1, 10],
    [2, 20],
    [3, 40],
    [4, 50],
    [5, 50],
    [6, 50],
  ]);
  for (const e of rec.of("reconnecting")) assert.equal(e.detail.reason, "connect failed");
  assert.equal(rec.of("close").length, 7, "one close per failed connection");
  assert.equal(rec.of("open").length, 0);
  assert.equal(last.detail.willReconnect, false);
  assert.equal(client.state, "closed");
  assert.throws(() => client.send("late"), /closed/);
});

test("bad rooms are refused before they reach the server", async () => {
  const port = await closedPort();
  const client = new RoomcastClient(`ws://127.0.0.1:${port}/`, { WebSocket });
  try {
    assert.throws(() => client.join(""), RangeError);
    assert.throws(() => client.join(7), TypeError);
    assert.throws(() => client.join("é".repeat(129)), RangeError);
    client.join("é".repeat(128));
    assert.equal(client.roomId, "é".repeat(128));
  } finally {
    client.close();
  }
});

test("without a WebSocket class the constructor says what to do", () => {
  const saved = globalThis.WebSocket;
  try {
    globalThis.WebSocket = undefined;
    assert.throws(() => new RoomcastClient("ws://127.0.0.1:1/"), /experimental-websocket/);
  } finally {
    globalThis.WebSocket = saved;
  }
});

test("http: URLs map to ws:", async () => {
  const port = await closedPort();
  const client = new RoomcastClient(`http://127.0.0.1:${port}/x`, { WebSocket });
  client.close();
  assert.equal(client.url, `ws://127.0.0.1:${port}/x`);
});

test("the typings declare exactly what the module exports", async () => {
  const { readFile } = await import("node:fs/promises");
  const dts = await readFile(new URL("../client.d.ts", import.meta.url), "utf8");
  const declared = [...dts.matchAll(/^export declare (?:const|function|class) (\w+)/gm)]
    .map((m) => m[1])
    .sort();
  const exported = Object.keys(await import("../client.js")).sort();
  assert.deepEqual(declared, exported);
});

test("close() from a close listener stops the retries", async () => {
  const port = await closedPort();
  const client = new RoomcastClient(`ws://127.0.0.1:${port}/`, { WebSocket, backoffBaseMs: 10 });
  const rec = new Recorder(client);
  client.once("close", () => client.close());
  await rec.next("close", (c) => !c.willReconnect, { from: 0 });
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(client.state, "closed");
  assert.equal(rec.of("reconnecting").length, 0);
  assert.equal(rec.of("close").length, 2);
});
