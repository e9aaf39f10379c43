// The client in Node.js (with the `ws` package's WebSocket) against the
// real roomcast binary: chat, restart with queued messages, the backoff
// reset, dead-connection detection through a proxy that goes silent, the
// server's `reconnect` at a connection's maximum age; and the files
// roomcast serves for it.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import WebSocket from "ws";

import { CLOSE_HEARTBEAT_TIMEOUT, RoomcastClient } from "../client.js";
import { BINARY, Recorder, sleep, startProxy, startServer } from "./support.js";

// ROOMCAST_TEST_WEBSOCKET=global runs these tests with Node's own
// WebSocket (Node 22, or Node 20 with --experimental-websocket) instead of
// the `ws` package's.
const WS_CLASS =
  process.env.ROOMCAST_TEST_WEBSOCKET === "global" ? globalThis.WebSocket : WebSocket;
if (typeof WS_CLASS !== "function") throw new Error("this Node.js has no global WebSocket");
console.log(`# WebSocket class: ${WS_CLASS === WebSocket ? "ws package" : "Node's own"}`);

function client(url, options = {}) {
  const c = new RoomcastClient(url, { WebSocket: WS_CLASS, ...options });
  return { client: c, rec: new Recorder(c) };
}

test("two clients chat in a room and see the member count", async (t) => {
  const server = await startServer();
  t.after(() => server.kill());
  const a = client(server.url, { room: "two" });
  const b = client(server.url);
  t.after(() => {
    a.client.close();
    b.client.close();
  });
  await a.rec.next("joined", (m) => m.userCount === 1, { from: 0 });
  b.client.join("two");
  await b.rec.next("joined", (m) => m.roomId === "two" && m.userCount === 2, { from: 0 });
  await a.rec.next("user_joined", (m) => m.userCount === 2, { from: 0 });
  assert.equal(a.client.userCount, 2);
  assert.equal(b.client.userCount, 2);

  assert.equal(a.client.send("hi from a"), true);
  const got = await b.rec.next("message", (m) => m.text === "hi from a", { from: 0 });
  assert.equal(got.detail.clientId, a.client.clientId);
  assert.equal(got.detail.roomId, "two");
  assert.match(got.detail.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  await a.rec.next("message", (m) => m.text === "hi from a", { from: 0 });

  a.client.sendJson({ type: "hello", n: 1 });
  const echo = await a.rec.next("echo", () => true, { from: 0 });
  assert.deepEqual(echo.detail.originalMessage, { type: "hello", n: 1 });

  b.client.leave();
  await b.rec.next("left", () => true, { from: 0 });
  await a.rec.next("user_left", (m) => m.userCount === 1, { from: 0 });
  assert.equal(a.client.userCount, 1);
  // No reconnect happened along the way.
  assert.equal(a.rec.of("close").length + b.rec.of("close").length, 0);
});

test("after a restart the client rejoins and sends what was queued, oldest dropped", async (t) => {
  let server = await startServer();
  t.after(() => server.kill());
  const a = client(server.url, { room: "q", maxQueue: 3, backoffBaseMs: 100, backoffMaxMs: 400 });
  t.after(() => a.client.close());
  await a.rec.next("joined", () => true, { from: 0 });
  const firstId = a.client.clientId;

  const stopping = a.rec.events.length;
  assert.equal(await server.stop(), 0);
  const shutdown = await a.rec.next("server_shutdown", () => true, { from: stopping });
  const first = await a.rec.next("reconnecting", () => true, { from: stopping });
  assert.equal(first.detail.reason, "server_shutdown");
  assert.equal(first.detail.attempt, 1);
  assert.ok(first.detail.delay < 1000, `urgent delay ${first.detail.delay} ms`);
  assert.ok(first.at >= shutdown.at);

  for (const text of ["m1", "m2", "m3", "m4", "m5"]) {
    assert.equal(a.client.send(text), false, `${text} should be queued`);
  }
  assert.equal(a.client.queued, 3);
  assert.deepEqual(
    a.rec.of("dropped").map((e) => e.detail.value.text),
    ["m1", "m2"],
  );

  // Let at least one attempt fail against the closed port.
  await a.rec.next("reconnecting", (r) => r.reason === "connect failed", { from: stopping });
  server = await startServer({ port: server.port });

  const back = await a.rec.next("reconnected", () => true, { from: stopping, ms: 15000 });
  assert.equal(back.detail.roomId, "q");
  assert.notEqual(a.client.clientId, firstId, "a new connection has a new id");
  assert.equal(a.client.queued, 0);
  // The server sends a room's messages to the sender too: what comes back
  // is what reached the room, sent by the new connection.
  for (const text of ["m3", "m4", "m5"]) {
    await a.rec.next("message", (m) => m.text === text, { from: stopping });
  }
  const arrived = a.rec.of("message").map((e) => [e.detail.text, e.detail.clientId]);
  const id = a.client.clientId;
  assert.deepEqual(
    arrived,
    [
      ["m3", id],
      ["m4", id],
      ["m5", id],
    ],
    "once each, in order",
  );
  // Order of events on the way back: open, connected, joined, reconnected.
  const order = a.rec.events
    .slice(stopping)
    .map((e) => e.type)
    .filter((type) => ["open", "connected", "joined", "reconnected"].includes(type));
  assert.deepEqual(order, ["open", "connected", "joined", "reconnected"]);
});

test("the backoff starts again once a connection has stayed up", async (t) => {
  let server = await startServer();
  t.after(() => server.kill());
  const port = server.port;
  await server.stop();
  // The server is down: attempts pile up.
  const a = client(`ws://127.0.0.1:${port}/`, {
    room: "s",
    backoffBaseMs: 50,
    backoffMaxMs: 200,
    stableAfterMs: 300,
  });
  t.after(() => a.client.close());
  await a.rec.next("reconnecting", (r) => r.attempt >= 3, { from: 0 });
  server = await startServer({ port });
  // The first connection that works: `joined`, not `reconnected`.
  await a.rec.next("joined", () => true, { from: 0 });
  assert.equal(a.rec.of("reconnected").length, 0);
  assert.ok(a.client.attempt >= 3, "not reset before stableAfterMs");
  for (let i = 0; i < 100 && a.client.attempt !== 0; i++) await sleep(50);
  assert.equal(a.client.attempt, 0, "reset after stableAfterMs");

  const before = a.rec.events.length;
  await server.stop();
  const next = await a.rec.next("reconnecting", () => true, { from: before });
  assert.equal(next.detail.attempt, 1);
});

test("a silent connection is detected and replaced; a quiet but live one is kept", async (t) => {
  const server = await startServer();
  t.after(() => server.kill());
  const proxy = await startProxy(server.port);
  t.after(() => proxy.close());
  const a = client(proxy.url, {
    room: "dead",
    heartbeatIntervalMs: 200,
    // Roomy, so that a busy machine does not make a live connection look
    // dead in the first half of the test.
    heartbeatTimeoutMs: 1000,
    backoffBaseMs: 50,
  });
  t.after(() => a.client.close());
  await a.rec.next("joined", () => true, { from: 0 });

  // Quiet room, live network: the probes are answered, nothing is dropped,
  // and the probes' echoes are not shown as `echo` events.
  await sleep(2000);
  assert.equal(a.rec.of("close").length, 0, "a live connection was dropped");
  assert.equal(a.rec.of("echo").length, 0, "probe answers leaked as echo events");
  assert.equal(proxy.connections, 1);

  const frozenAt = Date.now();
  proxy.freeze();
  const closed = await a.rec.next("close", () => true, { from: 0 });
  assert.equal(closed.detail.code, CLOSE_HEARTBEAT_TIMEOUT);
  assert.equal(closed.detail.willReconnect, true);
  const detectedMs = closed.at - frozenAt;
  const retry = await a.rec.next("reconnecting", () => true, { from: 0 });
  assert.equal(retry.detail.reason, "heartbeat timeout");
  const back = await a.rec.next("reconnected", () => true, { from: 0 });
  assert.equal(back.detail.roomId, "dead");
  // At most interval + timeout after the last byte received; printed, not
  // asserted, as a loaded machine stretches timers.
  console.log(`# dead connection noticed ${detectedMs} ms after the network went silent`);
});

test("the server's reconnect request at the maximum age is followed at once", async (t) => {
  const server = await startServer({ args: ["--max-connection-age", "1500ms"] });
  t.after(() => server.kill());
  const a = client(server.url, {
    room: "r",
    // A backoff this long would fail the test: only the urgent path is
    // quick enough.
    backoffBaseMs: 60000,
    urgentReconnectMaxMs: 200,
  });
  t.after(() => a.client.close());
  await a.rec.next("joined", () => true, { from: 0 });
  const asked = await a.rec.next("reconnect", () => true, { from: 0 });
  assert.equal(asked.detail.reason, "max-age");
  const retry = await a.rec.next("reconnecting", () => true, { from: 0 });
  assert.equal(retry.detail.reason, "reconnect");
  assert.ok(retry.detail.delay < 200, `delay ${retry.detail.delay} ms is not the urgent one`);
  const back = await a.rec.next("reconnected", () => true, { from: 0, ms: 5000 });
  assert.equal(back.detail.roomId, "r");
  // The old connection's leave and the new one's join race at the server;
  // either way the count settles at 1.
  if (a.client.userCount !== 1) {
    await a.rec.next("user_left", (m) => m.userCount === 1, { from: 0 });
  }
  assert.equal(a.client.userCount, 1);
});

test("the page and client are served with their types and headers", async (t) => {
  const server = await startServer();
  t.after(() => server.kill());
  const expect = {
    "/chat": "text/html; charset=utf-8",
    "/client.js": "text/javascript; charset=utf-8",
    "/client.d.ts": "text/plain; charset=utf-8",
  };
  for (const [p, type] of Object.entries(expect)) {
    const res = await fetch(`${server.http}${p}`);
    assert.equal(res.status, 200, p);
    assert.equal(res.headers.get("content-type"), type, p);
    assert.equal(res.headers.get("x-content-type-options"), "nosniff", p);
    assert.equal(res.headers.get("cache-control"), "no-cache", p);
    const etag = res.headers.get("etag");
    assert.match(etag, /^"[0-9a-f]{16}"$/, p);
    await res.arrayBuffer();
    const again = await fetch(`${server.http}${p}`, { headers: { "If-None-Match": etag } });
    assert.equal(again.status, 304, p);
    const head = await fetch(`${server.http}${p}`, { method: "HEAD" });
    assert.equal(head.status, 200, p);
    assert.equal(head.headers.get("content-type"), type, p);
  }
  // The module the page loads is the one in the repository.
  const body = await (await fetch(`${server.http}/client.js`)).text();
  const file = await readFile(new URL("../client.js", import.meta.url), "utf8");
  assert.ok(body === file, `${BINARY} serves another client.js than web/client.js: rebuild it`);
});
