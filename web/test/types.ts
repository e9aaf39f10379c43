// Compiled with `tsc --noEmit` (npm run typecheck): the typings describe
// the client as it is used, and wrong uses are errors.

import {
  backoffDelay,
  CLOSE_HEARTBEAT_TIMEOUT,
  DEFAULTS,
  RoomcastClient,
  SendQueue,
  type ChatMessage,
  type ClientState,
} from "../client.js";
import WS from "ws";

const client = new RoomcastClient("ws://localhost:8080/", {
  room: "lobby",
  backoffMaxMs: 10_000,
  maxQueue: 10,
  random: Math.random,
});

client.on("message", (m: ChatMessage) => {
  const text: string = m.text;
  const when: Date = new Date(m.timestamp);
  void [text, when];
});
const off = client.on("reconnecting", ({ attempt, delay, reason }) => {
  const n: number = attempt + delay;
  const r: "server_shutdown" | string = reason;
  void [n, r];
});
off();
client.once("reconnected", (r) => void r.roomId?.toUpperCase());
client.on("close", (c) => void (c.willReconnect && c.code === CLOSE_HEARTBEAT_TIMEOUT));
client.on("dropped", (d) => void d.value);
client.on("user_joined", (m) => void m.userCount.toFixed());

const queued: boolean = !client.send("hi");
client.sendJson({ type: "custom" });
client.join("other");
client.leave();
const state: ClientState = client.state;
const count: number | null = client.userCount;
void [queued, state, count];

const q = new SendQueue<string>(3);
const dropped: string | undefined = q.push("a");
const delay: number = backoffDelay(2, DEFAULTS.backoffBaseMs, DEFAULTS.backoffMaxMs, Math.random);
void [dropped, delay];

// @ts-expect-error: no such event
client.on("messages", () => {});
// @ts-expect-error: text must be a string
client.send(42);
// @ts-expect-error: a message event has no attempt
client.on("message", (m) => m.attempt);
// @ts-expect-error: no such option
new RoomcastClient("ws://x/", { retries: 3 });

client.close();

// The browser's WebSocket class fits the option.
new RoomcastClient("ws://x/", { WebSocket: globalThis.WebSocket }).close();
// And so does the `ws` package's, for Node.js 20.
new RoomcastClient("ws://x/", { WebSocket: WS }).close();
