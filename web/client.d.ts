// Typings for roomcast's client, served at /client.d.ts beside /client.js.

/**
 * What the client needs of a WebSocket: the browser's, Node's or `ws`'s.
 * The handlers take `any` so that each of those, with its own event types,
 * fits.
 */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: any) => void) | null;
  onclose: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketClass = new (url: string) => WebSocketLike;

export interface RoomcastOptions {
  /** Room to join on connecting, and to rejoin after every reconnect. */
  room?: string | null;
  /**
   * The WebSocket class. Default: `globalThis.WebSocket` (browsers, Node.js
   * 22+, Node.js 20 with `--experimental-websocket`).
   */
  WebSocket?: WebSocketClass;
  /** Ceiling of the first reconnect delay, doubled per attempt. Default 500. */
  backoffBaseMs?: number;
  /** Largest reconnect delay ceiling. Default 30000. */
  backoffMaxMs?: number;
  /** A connection that stays up this long resets the backoff. Default 10000. */
  stableAfterMs?: number;
  /** Attempts before giving up; `Infinity` never gives up. Default Infinity. */
  maxRetries?: number;
  /** After `server_shutdown` or `reconnect`: reconnect within a random delay below this. Default 1000. */
  urgentReconnectMaxMs?: number;
  /** A connection not open after this long is abandoned and retried. Default 10000. */
  connectTimeoutMs?: number;
  /**
   * After this long with nothing received the client sends a probe the
   * server answers; 0 turns dead-connection detection off. Default 25000.
   */
  heartbeatIntervalMs?: number;
  /** With no answer to the probe within this, the connection is dropped. Default 10000. */
  heartbeatTimeoutMs?: number;
  /** How long a socket being closed may take before it is abandoned. Default 2000. */
  closeGraceMs?: number;
  /** Messages kept while disconnected; the oldest is dropped beyond it. Default 100. */
  maxQueue?: number;
  /** Uniform random numbers in [0, 1) for the jitter. Default Math.random. */
  random?: () => number;
}

export type ClientState = "connecting" | "open" | "ready" | "closing" | "waiting" | "closed";

export interface ConnectedEvent {
  type: "connected";
  clientId: string;
  instanceId: string;
}
export interface JoinedEvent {
  type: "joined";
  roomId: string;
  userCount: number;
}
export interface LeftEvent {
  type: "left";
  roomId: string;
}
export interface MemberEvent {
  type: "user_joined" | "user_left";
  clientId: string;
  roomId: string;
  userCount: number;
}
export interface ChatMessage {
  type: "message";
  clientId: string;
  roomId: string;
  text: string;
  /** ISO 8601 UTC with milliseconds. */
  timestamp: string;
}
export interface EchoEvent {
  type: "echo";
  originalMessage: unknown;
  timestamp: string;
}
export interface ErrorEvent {
  /** What went wrong: the server's words when `fromServer`. */
  message: string;
  /** True for the server's `error` replies, false for problems the client saw. */
  fromServer: boolean;
}
export interface CloseEvent {
  /** The code received, or the one the client sent when it gave up on the socket. */
  code: number;
  reason: string;
  wasClean: boolean;
  /** False after close() or once maxRetries is spent. */
  willReconnect: boolean;
}
export interface ReconnectingEvent {
  /** 1 for the first attempt after a stable connection. */
  attempt: number;
  /** Milliseconds until the attempt starts. */
  delay: number;
  reason:
    | "connection lost"
    | "connect failed"
    | "connect timeout"
    | "heartbeat timeout"
    | "server_shutdown"
    | "reconnect";
}
export interface ReconnectedEvent {
  attempt: number;
  roomId: string | null;
  clientId: string | null;
  userCount: number | null;
}
export interface DroppedEvent {
  /** The value given to send() or sendJson(). */
  value: unknown;
  reason: "queue full" | "connection lost during flush";
}

export interface RoomcastEvents {
  /** A WebSocket opened (each connection). */
  open: { url: string };
  connected: ConnectedEvent;
  joined: JoinedEvent;
  left: LeftEvent;
  user_joined: MemberEvent;
  user_left: MemberEvent;
  message: ChatMessage;
  echo: EchoEvent;
  error: ErrorEvent;
  /** The server is shutting down; the client reconnects at once. */
  server_shutdown: { type: "server_shutdown" };
  /** The server asks the client to reconnect; it does at once. */
  reconnect: { type: "reconnect"; reason?: string };
  /** A reply of a type this client does not know. */
  unknown: { type?: unknown; [key: string]: unknown };
  reconnecting: ReconnectingEvent;
  /** Back after a reconnect: room rejoined, queue flushed. */
  reconnected: ReconnectedEvent;
  dropped: DroppedEvent;
  /** A WebSocket closed (each connection). */
  close: CloseEvent;
}

export declare const DEFAULTS: Readonly<Required<Omit<RoomcastOptions, "WebSocket" | "random">>>;
/** Close code sent when a silent connection is dropped. */
export declare const CLOSE_HEARTBEAT_TIMEOUT: 4000;
/** Close code sent when a connection does not open in time. */
export declare const CLOSE_CONNECT_TIMEOUT: 4001;

/** Full-jitter backoff: `floor(random() * min(maxMs, baseMs * 2^(attempt-1)))`. */
export declare function backoffDelay(
  attempt: number,
  baseMs: number,
  maxMs: number,
  random: () => number,
): number;

/** A FIFO of at most `limit` items; push() returns the item dropped, if any. */
export declare class SendQueue<T = unknown> {
  constructor(limit: number);
  readonly length: number;
  readonly limit: number;
  push(item: T): T | undefined;
  drain(): T[];
}

export declare class RoomcastClient {
  /** Connects at once. `url` may be ws:, wss:, http: or https:, or relative in a browser. */
  constructor(url: string | URL, options?: RoomcastOptions);
  readonly url: string;
  readonly state: ClientState;
  readonly clientId: string | null;
  readonly instanceId: string | null;
  readonly roomId: string | null;
  readonly userCount: number | null;
  readonly queued: number;
  readonly attempt: number;
  /** Epoch milliseconds of the next attempt while `waiting`, else null. */
  readonly retryAt: number | null;

  on<K extends keyof RoomcastEvents>(
    type: K,
    listener: (detail: RoomcastEvents[K]) => void,
  ): () => void;
  off<K extends keyof RoomcastEvents>(type: K, listener: (detail: RoomcastEvents[K]) => void): void;
  once<K extends keyof RoomcastEvents>(
    type: K,
    listener: (detail: RoomcastEvents[K]) => void,
  ): () => void;

  /** Joins a room (leaving the current one) and rejoins it after reconnects. */
  join(roomId: string): void;
  leave(): void;
  /** true: written now; false: queued for after the reconnect. */
  send(text: string): boolean;
  sendJson(value: unknown): boolean;
  /** Closes for good; queued messages are discarded. */
  close(code?: number, reason?: string): void;
}
