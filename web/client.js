// roomcast client: a chat client that reconnects on its own.
//
// A dependency-free ES module for browsers and Node.js 20+. roomcast serves
// it at /client.js and its typings at /client.d.ts.
//
//   import { RoomcastClient } from "/client.js";
//   const client = new RoomcastClient("wss://chat.example/", { room: "lobby" });
//   client.on("message", (m) => console.log(m.clientId, m.text));
//   client.send("hello");
//
// Every connection ends sooner or later (deploys, scale-in, request
// timeouts, networks that drop), so the client treats a close it did not ask
// for as routine: it waits, reconnects, rejoins its room and sends what was
// queued meanwhile. The choices, and what they cost:
//
// - Backoff is exponential with full jitter (a uniformly random delay below
//   base * 2^(attempt-1), capped), so clients cut off together come back
//   spread out instead of in one burst. It starts again from the bottom
//   once a connection has stayed up for `stableAfterMs`.
// - `server_shutdown` and `reconnect` mean the server wants us elsewhere
//   now: the client closes and reconnects after a small random delay, not a
//   backoff.
// - Browsers answer the server's pings but never show them to the page, so
//   a connection whose network died silently looks exactly like a quiet
//   room. The client therefore watches inbound traffic of any kind: after
//   `heartbeatIntervalMs` with nothing received it sends a small JSON probe,
//   which the server answers (as an `echo`, the answer to every message
//   type it does not know), and if nothing at all arrives within
//   `heartbeatTimeoutMs` more it drops the connection and reconnects.
//   Consequence: a dead connection is noticed within interval + timeout
//   (35 s by default), and an idle client costs one small message each way
//   per interval.
// - Delivery is at most once. Messages sent while disconnected are queued
//   (at most `maxQueue`, the oldest dropped first with a `dropped` event)
//   and sent after the rejoin; a message written into a connection that
//   then turns out dead is lost, since the protocol has no
//   acknowledgements.

/** Defaults of every option, in milliseconds where it is a duration. */
export const DEFAULTS = Object.freeze({
  room: null,
  backoffBaseMs: 500,
  backoffMaxMs: 30000,
  stableAfterMs: 10000,
  maxRetries: Infinity,
  urgentReconnectMaxMs: 1000,
  connectTimeoutMs: 10000,
  heartbeatIntervalMs: 25000,
  heartbeatTimeoutMs: 10000,
  closeGraceMs: 2000,
  maxQueue: 100,
});

/** Close code the client uses when it gives up on a silent connection. */
export const CLOSE_HEARTBEAT_TIMEOUT = 4000;
/** Close code the client uses when a connection does not open in time. */
export const CLOSE_CONNECT_TIMEOUT = 4001;

/** The probe's `type`; the server answers it with an `echo`. */
const PROBE_TYPE = "roomcast_probe";

/** The largest room name the server accepts, in UTF-8 bytes. */
const MAX_ROOM_BYTES = 256;

/** How long a socket that reported an error has to report its close. */
const ERROR_GRACE_MS = 500;

// WebSocket.readyState OPEN, the same in browsers, Node and `ws`.
const OPEN = 1;

/**
 * The delay before reconnect attempt `attempt` (1 for the first):
 * exponential backoff with full jitter, `random() * min(maxMs, baseMs *
 * 2^(attempt-1))`, rounded down to whole milliseconds.
 *
 * @param {number} attempt 1, 2, ...
 * @param {number} baseMs the ceiling of the first delay
 * @param {number} maxMs the largest ceiling
 * @param {() => number} random uniform in [0, 1), such as Math.random
 * @returns {number}
 */
export function backoffDelay(attempt, baseMs, maxMs, random) {
  // 2^31 times any base of a millisecond or more is past any sensible cap;
  // stopping there also keeps 0 * Infinity (NaN) out when baseMs is 0.
  const exponent = Math.min(Math.max(attempt, 1) - 1, 31);
  const ceiling = Math.min(maxMs, baseMs * 2 ** exponent);
  return Math.floor(random() * ceiling);
}

/**
 * A first-in first-out queue of at most `limit` items: pushing onto a full
 * queue drops the oldest item and returns it.
 */
export class SendQueue {
  #items = [];
  #limit;

  /** @param {number} limit the most items kept; 0 keeps none */
  constructor(limit) {
    if (!Number.isInteger(limit) || limit < 0) {
      throw new RangeError(`queue limit must be a whole number >= 0, not ${limit}`);
    }
    this.#limit = limit;
  }

  /** How many items are queued. */
  get length() {
    return this.#items.length;
  }

  /** The most items kept. */
  get limit() {
    return this.#limit;
  }

  /**
   * Appends `item`. Returns the item dropped to make room (the oldest, or
   * `item` itself when the limit is 0), or undefined.
   */
  push(item) {
    if (this.#limit === 0) return item;
    this.#items.push(item);
    return this.#items.length > this.#limit ? this.#items.shift() : undefined;
  }

  /** Removes and returns every item, oldest first. */
  drain() {
    const items = this.#items;
    this.#items = [];
    return items;
  }
}

/**
 * A chat client that reconnects with backoff, rejoins its room and sends
 * what was queued while it was away. See the README for its events.
 */
export class RoomcastClient {
  #url;
  #opts;
  #WebSocket;
  #random;
  #listeners = new Map();
  #queue;

  #ws = null;
  // "connecting", "open" (socket open, room not yet rejoined), "ready",
  // "closing" (a socket we gave up on), "waiting" (for the next attempt)
  // or "closed" (by close(), or retries exhausted).
  #state = "connecting";
  #attempt = 0;
  #everReady = false;
  #clientId = null;
  #instanceId = null;
  // The room the user asked for, and the room the server has us in.
  #room = null;
  #serverRoom = null;
  #userCount = null;
  #joinPending = false;

  #connectTimer = null;
  #stableTimer = null;
  #heartbeatTimer = null;
  #retryTimer = null;
  #graceTimer = null;
  #lastInbound = 0;
  #probeOutstanding = false;
  #probeCount = 0;
  #retryAt = null;

  /**
   * Connects at once.
   *
   * @param {string | URL} url ws:, wss:, http: or https: (mapped to ws: and
   *   wss:); in a browser it may be relative to the page.
   * @param {object} [options] see DEFAULTS and the typings
   */
  constructor(url, options = {}) {
    this.#opts = { ...DEFAULTS, ...options };
    const WS = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== "function") {
      throw new TypeError(
        "no WebSocket class: pass { WebSocket } (for example from the ws " +
          "package), or run Node.js 22+ or Node.js 20 with --experimental-websocket",
      );
    }
    this.#WebSocket = WS;
    this.#random = options.random ?? Math.random;
    this.#url = resolveUrl(url);
    this.#queue = new SendQueue(this.#opts.maxQueue);
    if (this.#opts.room != null) {
      checkRoom(this.#opts.room);
      this.#room = this.#opts.room;
    }
    this.#connect();
  }

  /** The WebSocket URL connected to. */
  get url() {
    return this.#url;
  }

  /** "connecting", "open", "ready", "closing", "waiting" or "closed". */
  get state() {
    return this.#state;
  }

  /** The id the server gave this connection, once `connected`. */
  get clientId() {
    return this.#clientId;
  }

  /** The server instance of the current connection, once `connected`. */
  get instanceId() {
    return this.#instanceId;
  }

  /** The room asked for with join() or the `room` option, or null. */
  get roomId() {
    return this.#room;
  }

  /** Members in the room, as last reported by the server, or null. */
  get userCount() {
    return this.#userCount;
  }

  /** Messages waiting for the connection. */
  get queued() {
    return this.#queue.length;
  }

  /** Failed attempts since the last stable connection. */
  get attempt() {
    return this.#attempt;
  }

  /** When the next attempt starts (epoch ms), while `waiting`; else null. */
  get retryAt() {
    return this.#retryAt;
  }

  /**
   * Calls `listener(detail)` for every event of `type`. Returns a function
   * that removes it.
   */
  on(type, listener) {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => this.off(type, listener);
  }

  /** Removes a listener added with on(). */
  off(type, listener) {
    this.#listeners.get(type)?.delete(listener);
  }

  /** Like on(), for the next event of `type` only. */
  once(type, listener) {
    const off = this.on(type, (detail) => {
      off();
      listener(detail);
    });
    return off;
  }

  /**
   * Joins `roomId`, leaving the current room; the client rejoins it after
   * every reconnect.
   *
   * @throws {TypeError | RangeError} for a room the server would refuse
   */
  join(roomId) {
    this.#assertNotClosed();
    checkRoom(roomId);
    this.#room = roomId;
    if (this.#state === "ready") {
      this.#sendNow({ type: "join", roomId });
    }
    // Otherwise the join happens once the connection is up.
  }

  /** Leaves the current room; the client stays connected. */
  leave() {
    this.#assertNotClosed();
    this.#room = null;
    if (this.#state === "ready" && this.#serverRoom !== null) {
      this.#sendNow({ type: "leave" });
    }
  }

  /**
   * Sends a chat message to the room. Returns true when it was written to
   * the connection, false when it was queued for the next one.
   */
  send(text) {
    if (typeof text !== "string") throw new TypeError("text must be a string");
    return this.sendJson({ type: "message", text });
  }

  /**
   * Sends any JSON value, queued like send(). The server answers types it
   * does not know with an `echo`. Use join() and leave() for rooms, or the
   * client loses track of where it is.
   */
  sendJson(value) {
    this.#assertNotClosed();
    const data = JSON.stringify(value);
    if (this.#state === "ready" && this.#write(data)) return true;
    const dropped = this.#queue.push({ value, data });
    if (dropped !== undefined) {
      this.#emit("dropped", { value: dropped.value, reason: "queue full" });
    }
    return false;
  }

  /**
   * Closes for good: no reconnect follows. Messages still queued are
   * discarded. `close` is emitted once the socket has closed.
   */
  close(code = 1000, reason = "") {
    if (this.#state === "closed") return;
    this.#state = "closed";
    this.#queue.drain();
    this.#clearTimer("retry");
    this.#retryAt = null;
    const ws = this.#ws;
    if (ws) {
      this.#retire(ws, code, reason, this.#opts.closeGraceMs, "closed");
    } else {
      this.#emit("close", { code, reason, wasClean: true, willReconnect: false });
    }
  }

  // ---------------------------------------------------------- connection

  #connect() {
    this.#state = "connecting";
    this.#retryAt = null;
    let ws;
    try {
      ws = new this.#WebSocket(this.#url);
    } catch (err) {
      // A malformed URL or a refused scheme: retrying will not help, but a
      // client that never gives up keeps trying at the capped backoff.
      this.#emit("error", { message: String(err?.message ?? err), fromServer: false });
      this.#afterClose(
        { code: 1006, reason: "could not connect", wasClean: false },
        "connect failed",
      );
      return;
    }
    this.#ws = ws;
    ws.onopen = () => this.#onOpen(ws);
    ws.onmessage = (ev) => this.#onMessage(ws, ev.data);
    ws.onclose = (ev) => this.#onSocketClose(ws, ev);
    ws.onerror = () => this.#onSocketError(ws);
    this.#setTimer("connect", this.#opts.connectTimeoutMs, () => {
      this.#retire(ws, CLOSE_CONNECT_TIMEOUT, "connect timeout", 0, "connect timeout");
    });
  }

  #onOpen(ws) {
    if (ws !== this.#ws) return;
    this.#clearTimer("connect");
    this.#state = "open";
    this.#serverRoom = null;
    this.#joinPending = false;
    this.#lastInbound = now();
    this.#probeOutstanding = false;
    this.#scheduleHeartbeat(this.#opts.heartbeatIntervalMs);
    this.#setTimer("stable", this.#opts.stableAfterMs, () => {
      this.#attempt = 0;
    });
    this.#emit("open", { url: this.#url });
  }

  #onMessage(ws, data) {
    if (ws !== this.#ws) return;
    this.#lastInbound = now();
    this.#probeOutstanding = false;
    if (typeof data !== "string") {
      this.#emit("error", { message: "binary message ignored", fromServer: false });
      return;
    }
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      this.#emit("error", { message: "message from the server is not JSON", fromServer: false });
      return;
    }
    if (msg === null || typeof msg !== "object") return;
    switch (msg.type) {
      case "connected":
        this.#clientId = msg.clientId ?? null;
        this.#instanceId = msg.instanceId ?? null;
        this.#emit("connected", msg);
        if (this.#state === "open") this.#sync();
        break;
      case "joined":
        this.#serverRoom = msg.roomId;
        this.#userCount = msg.userCount;
        this.#joinPending = false;
        this.#emit("joined", msg);
        if (this.#state === "open") this.#sync();
        break;
      case "left":
        this.#serverRoom = null;
        this.#userCount = null;
        this.#joinPending = false;
        this.#emit("left", msg);
        if (this.#state === "open") this.#sync();
        break;
      case "user_joined":
      case "user_left":
        if (msg.roomId === this.#serverRoom) this.#userCount = msg.userCount;
        this.#emit(msg.type, msg);
        break;
      case "message":
        this.#emit("message", msg);
        break;
      case "echo":
        if (msg.originalMessage?.type === PROBE_TYPE) break;
        this.#emit("echo", msg);
        break;
      case "error":
        this.#emit("error", { ...msg, fromServer: true });
        if (this.#state === "open" && this.#joinPending) {
          // The rejoin was refused (a room checkRoom let through but the
          // server did not): stay out of rooms rather than wait forever.
          this.#room = this.#serverRoom;
          this.#joinPending = false;
          this.#sync();
        }
        break;
      case "server_shutdown":
        this.#emit("server_shutdown", msg);
        this.#retire(ws, 1000, "server shutting down", this.#opts.closeGraceMs, "server_shutdown");
        break;
      case "reconnect":
        this.#emit("reconnect", msg);
        this.#retire(ws, 1000, "reconnect requested", this.#opts.closeGraceMs, "reconnect");
        break;
      default:
        this.#emit("unknown", msg);
    }
  }

  // Brings the server's room in line with the one asked for, then opens
  // the gate: queued messages go out and `reconnected` fires.
  #sync() {
    if (this.#room === this.#serverRoom) {
      this.#becomeReady();
    } else if (this.#room === null) {
      this.#joinPending = true;
      this.#write(JSON.stringify({ type: "leave" }));
    } else {
      this.#joinPending = true;
      this.#write(JSON.stringify({ type: "join", roomId: this.#room }));
    }
  }

  #becomeReady() {
    this.#state = "ready";
    const attempt = this.#attempt;
    for (const { value, data } of this.#queue.drain()) {
      if (!this.#write(data)) {
        this.#emit("dropped", { value, reason: "connection lost during flush" });
      }
    }
    if (this.#everReady) {
      this.#emit("reconnected", {
        attempt,
        roomId: this.#serverRoom,
        clientId: this.#clientId,
        userCount: this.#userCount,
      });
    }
    this.#everReady = true;
  }

  #onSocketClose(ws, ev) {
    if (ws !== this.#ws) return;
    const cause = this.#state === "connecting" ? "connect failed" : "connection lost";
    this.#afterClose(
      { code: ev.code ?? 1006, reason: ev.reason ?? "", wasClean: Boolean(ev.wasClean) },
      cause,
    );
  }

  // Browsers always follow an error with a close, which is what we act on.
  // Node 20's experimental WebSocket does not for a refused connection (it
  // stays CONNECTING), so the socket is given up on if no close follows.
  #onSocketError(ws) {
    if (ws !== this.#ws || this.#state === "closing" || this.#state === "closed") return;
    const cause = this.#state === "connecting" ? "connect failed" : "connection lost";
    this.#setTimer("grace", ERROR_GRACE_MS, () => {
      if (ws === this.#ws) this.#afterClose({ code: 1006, reason: "", wasClean: false }, cause);
    });
  }

  // Starts closing `ws` and stops listening to it after `graceMs` (at
  // once for 0), or when its close event comes, whichever is first.
  #retire(ws, code, reason, graceMs, cause) {
    if (ws !== this.#ws) return;
    this.#stopConnectionTimers();
    if (this.#state !== "closed") this.#state = "closing";
    try {
      ws.close(code, reason);
    } catch {
      // A code or reason the WebSocket refuses (browsers allow only 1000
      // and 3000-4999, and 123 bytes of reason): close it all the same.
      try {
        ws.close();
      } catch {
        // Already closed: nothing more to ask of it.
      }
    }
    const finish = (info) => {
      if (ws !== this.#ws) return;
      this.#clearTimer("grace");
      this.#afterClose(info, cause);
    };
    ws.onclose = (ev) =>
      finish({
        code: ev.code ?? code,
        reason: ev.reason ?? reason,
        wasClean: Boolean(ev.wasClean),
      });
    const abandoned = { code, reason, wasClean: false };
    if (graceMs <= 0) {
      finish(abandoned);
    } else {
      this.#setTimer("grace", graceMs, () => finish(abandoned));
    }
  }

  #afterClose(info, cause) {
    const ws = this.#ws;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      // Keep a no-op: `ws` (the npm package) throws on an unhandled error
      // event, which a late failure of an abandoned socket could raise.
      ws.onerror = () => {};
    }
    this.#ws = null;
    this.#stopConnectionTimers();
    this.#clearTimer("grace");
    const closedByUser = this.#state === "closed";
    const nextAttempt = this.#attempt + 1;
    const willReconnect = !closedByUser && nextAttempt <= this.#opts.maxRetries;
    this.#emit("close", { ...info, willReconnect });
    // A listener may have called close().
    if (!willReconnect || this.#state === "closed") {
      this.#state = "closed";
      return;
    }
    this.#attempt = nextAttempt;
    const urgent = cause === "server_shutdown" || cause === "reconnect";
    const delay = urgent
      ? Math.floor(this.#random() * this.#opts.urgentReconnectMaxMs)
      : backoffDelay(nextAttempt, this.#opts.backoffBaseMs, this.#opts.backoffMaxMs, this.#random);
    this.#state = "waiting";
    this.#retryAt = Date.now() + delay;
    this.#emit("reconnecting", { attempt: nextAttempt, delay, reason: cause });
    // A listener may have closed the client.
    if (this.#state !== "waiting") return;
    this.#setTimer("retry", delay, () => this.#connect());
  }

  // -------------------------------------------------------------- heartbeat

  #scheduleHeartbeat(delay) {
    if (this.#opts.heartbeatIntervalMs <= 0) return;
    this.#setTimer("heartbeat", delay, () => this.#onHeartbeat());
  }

  // Runs at most once per interval however busy the connection is: inbound
  // traffic only moves #lastInbound, and the timer re-arms for what is left.
  #onHeartbeat() {
    const ws = this.#ws;
    if (!ws) return;
    const { heartbeatIntervalMs: interval, heartbeatTimeoutMs: timeout } = this.#opts;
    if (this.#probeOutstanding) {
      this.#retire(ws, CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout", 0, "heartbeat timeout");
      return;
    }
    const idle = now() - this.#lastInbound;
    if (idle < interval) {
      this.#scheduleHeartbeat(interval - idle);
      return;
    }
    this.#probeOutstanding = true;
    this.#probeCount += 1;
    this.#write(JSON.stringify({ type: PROBE_TYPE, n: this.#probeCount }));
    this.#scheduleHeartbeat(timeout);
  }

  // ------------------------------------------------------------------ util

  #write(data) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== OPEN) return false;
    try {
      ws.send(data);
      return true;
    } catch {
      return false;
    }
  }

  #sendNow(value) {
    this.#write(JSON.stringify(value));
  }

  #assertNotClosed() {
    if (this.#state === "closed") throw new Error("the client is closed");
  }

  #timers = new Map();

  #setTimer(name, ms, fn) {
    this.#clearTimer(name);
    this.#timers.set(
      name,
      setTimeout(() => {
        this.#timers.delete(name);
        fn();
      }, ms),
    );
  }

  #clearTimer(name) {
    const id = this.#timers.get(name);
    if (id !== undefined) {
      clearTimeout(id);
      this.#timers.delete(name);
    }
  }

  #stopConnectionTimers() {
    this.#clearTimer("connect");
    this.#clearTimer("stable");
    this.#clearTimer("heartbeat");
  }

  #emit(type, detail) {
    const set = this.#listeners.get(type);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(detail);
      } catch (err) {
        // A throwing listener must not stop the client; report it the way
        // EventTarget does, as an uncaught error outside this call.
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}

function now() {
  return globalThis.performance?.now() ?? Date.now();
}

function resolveUrl(url) {
  const base = globalThis.location?.href;
  const u = base === undefined ? new URL(String(url)) : new URL(String(url), base);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  return u.href;
}

function checkRoom(roomId) {
  if (typeof roomId !== "string") throw new TypeError("roomId must be a string");
  if (roomId === "") throw new RangeError("roomId must not be empty");
  if (new TextEncoder().encode(roomId).length > MAX_ROOM_BYTES) {
    throw new RangeError(`roomId must be at most ${MAX_ROOM_BYTES} bytes`);
  }
}
