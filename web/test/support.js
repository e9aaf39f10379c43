// Test support: the real roomcast binary on loopback, a TCP proxy that can
// play a dead network, and an event recorder for RoomcastClient.

import { spawn } from "node:child_process";
import { once } from "node:events";
import { statSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));

/**
 * The binary under test: $ROOMCAST_BIN, else the newer of the static
 * release build (what scripts/test.sh builds) and a plain release build.
 */
export const BINARY =
  process.env.ROOMCAST_BIN ??
  newest([
    path.resolve(here, "../../target/x86_64-unknown-linux-gnu/release/roomcast"),
    path.resolve(here, "../../target/release/roomcast"),
  ]);

function newest(paths) {
  const found = paths
    .map((p) => ({ p, mtime: statSync(p, { throwIfNoEntry: false })?.mtimeMs }))
    .filter((f) => f.mtime !== undefined)
    .sort((a, b) => b.mtime - a.mtime);
  return found[0]?.p ?? paths[0];
}

/**
 * Starts roomcast on 127.0.0.1 and resolves once it logs `listening`.
 * `port` 0 lets it pick one; the returned object's `port` says which.
 */
export async function startServer({ port = 0, args = [] } = {}) {
  const child = spawn(BINARY, ["--host", "127.0.0.1", "--port", String(port), ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines = [];
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const listening = new Promise((resolve, reject) => {
    let buf = "";
    child.stdout.on("data", (chunk) => {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        lines.push(line);
        try {
          const entry = JSON.parse(line);
          if (entry.message === "listening") resolve(entry);
        } catch {
          // Not JSON: kept in `lines` for the failure message.
        }
      }
    });
    child.once("exit", (code, signal) =>
      reject(new Error(`roomcast exited (${code ?? signal}) before listening: ${stderr}`)),
    );
    child.once("error", reject);
  });
  const entry = await withTimeout(listening, 10000, "roomcast did not log listening");
  const address = String(entry.address ?? entry.addr ?? "");
  const boundPort = Number(address.slice(address.lastIndexOf(":") + 1));
  if (!Number.isInteger(boundPort) || boundPort <= 0) {
    child.kill("SIGKILL");
    throw new Error(`no port in the listening line: ${JSON.stringify(entry)}`);
  }
  const exited = once(child, "exit");
  return {
    port: boundPort,
    url: `ws://127.0.0.1:${boundPort}/`,
    http: `http://127.0.0.1:${boundPort}`,
    lines,
    /** SIGTERM, then waits for the process to exit; resolves to its exit code. */
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      const [code] = await withTimeout(exited, 15000, "roomcast did not exit after SIGTERM");
      return code;
    },
    /** Ends the process at once, for cleanup after a failed test. */
    kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    },
  };
}

/** Rejects with `what` if `promise` has not settled within `ms`. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} (after ${ms} ms)`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Records every event of a RoomcastClient with its time, and waits for
 * events matching a predicate.
 */
export class Recorder {
  events = [];
  #waiters = [];

  constructor(client) {
    const types = [
      "open",
      "connected",
      "joined",
      "left",
      "user_joined",
      "user_left",
      "message",
      "echo",
      "error",
      "server_shutdown",
      "reconnect",
      "unknown",
      "reconnecting",
      "reconnected",
      "dropped",
      "close",
    ];
    for (const type of types) {
      client.on(type, (detail) => {
        const event = { type, detail, at: Date.now() };
        this.events.push(event);
        for (const w of [...this.#waiters]) {
          if (w.test(event)) {
            this.#waiters.splice(this.#waiters.indexOf(w), 1);
            w.resolve(event);
          }
        }
      });
    }
  }

  /** All recorded events of `type`. */
  of(type) {
    return this.events.filter((e) => e.type === type);
  }

  /**
   * The first event of `type` recorded at index `from` or later that
   * satisfies `match`; waits up to `ms` for one.
   */
  next(type, match = () => true, { from = this.events.length, ms = 10000 } = {}) {
    const test = (e) => e.type === type && match(e.detail);
    const seen = this.events.slice(from).find(test);
    if (seen) return Promise.resolve(seen);
    return withTimeout(
      new Promise((resolve) => this.#waiters.push({ test, resolve })),
      ms,
      `no ${type} event; saw ${this.events.map((e) => e.type).join(", ")}`,
    );
  }
}

/**
 * A TCP proxy from a free loopback port to `target`. `freeze()` makes every
 * current connection a black hole (bytes are swallowed, nothing is closed),
 * as a dead network path looks; new connections pass normally.
 */
export async function startProxy(targetPort) {
  const pairs = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, "127.0.0.1");
    const pair = { client, upstream, frozen: false };
    pairs.add(pair);
    client.on("data", (d) => pair.frozen || upstream.write(d));
    upstream.on("data", (d) => pair.frozen || client.write(d));
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("close", end);
    upstream.on("close", end);
    client.on("error", end);
    upstream.on("error", end);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: `ws://127.0.0.1:${server.address().port}/`,
    get connections() {
      return pairs.size;
    },
    freeze() {
      for (const p of pairs) p.frozen = true;
    },
    async close() {
      for (const p of pairs) {
        p.client.destroy();
        p.upstream.destroy();
      }
      server.close();
      await once(server, "close");
    },
  };
}

/** A loopback port nothing listens on (bound, then released). */
export async function closedPort() {
  const server = net.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  server.close();
  await once(server, "close");
  return port;
}
