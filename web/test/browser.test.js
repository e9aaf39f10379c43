// The chat page in real headless Chromium (Debian's, driven by
// playwright-core) against the real roomcast binary: two pages chat, the
// server is stopped with SIGTERM and started again on the same port, and
// both pages come back on their own. Screenshots go to target/browser/.

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

import { sleep, startServer } from "./support.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const SHOTS = path.resolve(here, "../../target/browser");
const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";
// As root on a machine without outside network: no sandbox, and nothing
// that phones home (each refused connection would slow the start).
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
// Generous: the machine may be busy, and backoff after a restart can
// reach several seconds by design.
const WAIT = { timeout: 45000 };

/** A page's record of client events and status-line texts, from now on. */
async function watch(page) {
  await page.evaluate(() => {
    window.__events = [];
    window.__statuses = [];
    for (const type of ["close", "reconnecting", "reconnected", "server_shutdown"]) {
      window.roomcast.on(type, (detail) => window.__events.push({ type, detail, at: Date.now() }));
    }
    const status = document.getElementById("status");
    new MutationObserver(() => window.__statuses.push(status.textContent)).observe(status, {
      childList: true,
      characterData: true,
      subtree: true,
    });
  });
}

async function send(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

/** Waits until the page lists a message with `text`; returns its cells. */
async function message(page, text) {
  await page.waitForFunction(
    (t) =>
      [...document.querySelectorAll("#messages li.message .text")].some((e) => e.textContent === t),
    text,
    WAIT,
  );
  return page.evaluate((t) => {
    const li = [...document.querySelectorAll("#messages li.message")].find(
      (e) => e.querySelector(".text").textContent === t,
    );
    return {
      time: li.querySelector(".time").textContent,
      sender: li.querySelector(".sender").textContent,
      senderId: li.querySelector(".sender").title,
    };
  }, text);
}

async function members(page, n) {
  await page.waitForFunction(
    (n) => document.getElementById("members").dataset.count === n,
    String(n),
    WAIT,
  );
}

// Playwright adds --headless and a new temporary --user-data-dir, removed
// when the browser closes.
test("two pages chat, both come back after a restart, and the page looks right", async (t) => {
  let server = await startServer();
  t.after(() => server.kill());
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
  });
  t.after(() => browser.close());
  const problems = [];
  const open = async (name) => {
    const context = await browser.newContext({ viewport: { width: 860, height: 620 } });
    const page = await context.newPage();
    page.on("pageerror", (err) => problems.push(`${name}: ${err.message}`));
    page.on("console", (msg) => {
      // Failed connection attempts while the server is down are expected
      // console errors; a blocked resource or a script error is not.
      if (/Content.Security.Policy|Uncaught|SyntaxError/i.test(msg.text())) {
        problems.push(`${name}: ${msg.text()}`);
      }
    });
    return page;
  };
  const room = `browser-${process.pid}`;
  const a = await open("A");
  const b = await open("B");

  // Chat.
  await a.goto(`${server.http}/chat?room=${room}`);
  await a.waitForSelector('#status[data-state="ready"]', WAIT);
  await members(a, 1);
  await b.goto(`${server.http}/chat?room=${room}`);
  await b.waitForSelector('#status[data-state="ready"]', WAIT);
  await members(a, 2);
  await members(b, 2);
  assert.equal(await a.inputValue("#room"), room);
  assert.match(await b.textContent("#members"), /^2 members$/);

  const idA = await a.evaluate(() => window.roomcast.clientId);
  const idB = await b.evaluate(() => window.roomcast.clientId);
  await send(a, "Hello from A");
  await send(b, "Hi A, B here");
  for (const page of [a, b]) {
    const fromA = await message(page, "Hello from A");
    const fromB = await message(page, "Hi A, B here");
    assert.match(fromA.time, /^\d\d:\d\d:\d\d$/);
    assert.equal(fromA.senderId, idA);
    assert.equal(fromB.senderId, idB);
    assert.equal(fromA.sender, page === a ? "you" : `client-${idA.split("-").pop().slice(0, 6)}`);
    assert.equal(fromB.sender, page === b ? "you" : `client-${idB.split("-").pop().slice(0, 6)}`);
  }

  // Restart: SIGTERM, a pause long enough for failed attempts and a
  // visible countdown, then the same port again.
  await watch(a);
  await watch(b);
  const stoppedAt = Date.now();
  assert.equal(await server.stop(), 0, "roomcast exits 0 after SIGTERM");
  for (const page of [a, b]) {
    await page.waitForFunction(
      () => window.__statuses.some((s) => /^Reconnecting in \d+s \(attempt \d+\)$/.test(s)),
      null,
      WAIT,
    );
  }
  await a.waitForSelector('#status[data-state="waiting"]', WAIT);
  // Typed while the server is down: queued, and sent after the rejoin.
  for (const [name, page] of [
    ["A", a],
    ["B", b],
  ]) {
    await send(page, `${name}, typed while offline`);
    await page.waitForFunction(
      (t) =>
        [...document.querySelectorAll("#messages li.note")].some((e) =>
          e.textContent.endsWith(`queued until reconnected: ${t}`),
        ),
      `${name}, typed while offline`,
      WAIT,
    );
  }
  await mkdir(SHOTS, { recursive: true });
  await a.screenshot({ path: path.join(SHOTS, "chat-reconnecting.png") });
  await sleep(2500);
  server = await startServer({ port: server.port });
  const upAt = Date.now();

  const times = [];
  for (const [name, page] of [
    ["A", a],
    ["B", b],
  ]) {
    await page.waitForFunction(
      () => window.__events.some((e) => e.type === "reconnected"),
      null,
      WAIT,
    );
    const events = await page.evaluate(() => window.__events);
    const back = events.find((e) => e.type === "reconnected");
    const tries = events.filter((e) => e.type === "reconnecting");
    assert.equal(
      tries[0].detail.reason,
      "server_shutdown",
      `${name}: first retry is the urgent one`,
    );
    assert.ok(tries[0].detail.delay < 1000, `${name}: urgent delay ${tries[0].detail.delay} ms`);
    assert.ok(tries.length >= 2, `${name}: attempts failed while the server was down`);
    assert.equal(back.detail.roomId, room);
    times.push({
      name,
      at: back.at,
      sinceStop: back.at - stoppedAt,
      sinceUp: back.at - upAt,
      attempts: back.detail.attempt,
      delays: tries.map((e) => e.detail.delay),
    });
  }
  for (const page of [a, b]) {
    await page.waitForSelector('#status[data-state="ready"]', WAIT);
    await members(page, 2);
  }
  // A room keeps no history: each page's queued message reaches the room
  // when that page is back, so the page back first sees both, the other
  // its own.
  const [first, last] = times[0].at <= times[1].at ? [a, b] : [b, a];
  await message(first, "A, typed while offline");
  await message(first, "B, typed while offline");
  await message(last, `${last === a ? "A" : "B"}, typed while offline`);
  await send(a, "A again, after the restart");
  await send(b, "B again, after the restart");
  for (const page of [a, b]) {
    await message(page, "A again, after the restart");
    await message(page, "B again, after the restart");
  }
  await a.screenshot({ path: path.join(SHOTS, "chat.png") });

  for (const r of times) {
    console.log(
      `# page ${r.name}: reconnected ${r.sinceStop} ms after SIGTERM, ${r.sinceUp} ms after ` +
        `the new server was listening, attempt ${r.attempts}, delays ${r.delays.join("/")} ms`,
    );
  }
  console.log(
    `# screenshots: ${path.relative(process.cwd(), SHOTS)}/chat.png, chat-reconnecting.png`,
  );
  assert.deepEqual(problems, []);
});
