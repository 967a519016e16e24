// Types of the o2obroker browser client (the ES module of this package; the
// global script /o2obroker.js has the same API as `window.O2OBroker`).

export type Transport = "ws" | "lp";
export type ConnectionState = "connecting" | "open" | "closed";
export type PresenceState = "online" | "away" | "busy" | "offline";

/** Where sessionStorage is missing, or to keep the tab's device elsewhere. */
export interface DeviceStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export interface Options {
  /** The broker's HTTP address; default: the page's origin. */
  baseUrl?: string;
  /** A JWT (auth = token). */
  token?: string | null;
  /** A user id, for auth = none (development) only. */
  user?: string | null;
  /** The business id, for clusters with an app registry. */
  app?: string | null;
  /** This device's name; default: kept per tab, else "web-" + random. */
  device?: string;
  /** ["ws", "lp"] by default; ["lp"] never tries WebSockets. */
  transports?: Transport[];
  /** Passed to /getFreeHostAddress to pick a node. */
  room?: string | null;
  /** Time on long-poll before a WebSocket is tried again (60000). */
  wsRetryMs?: number;
  /** A WebSocket not welcomed by then counts as broken (5000). */
  connectTimeoutMs?: number;
  /** connect() rejects when no welcome came by then (10000). */
  welcomeTimeoutMs?: number;
  /** A ping of the client's own unanswered by then: the socket is stalled (5000). */
  pingTimeoutMs?: number;
  /** First retry delay (500), doubled per failure up to maxBackoffMs (30000), with jitter. */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** The device's initial presence. */
  state?: PresenceState;
  status?: string;
  /** Where the device and last seq are kept per tab; default sessionStorage, null for none. */
  storage?: DeviceStorage | null;
}

export interface Welcome {
  t: "welcome";
  user: string;
  device: string;
  session: string;
  node: string;
  hb: number;
  max_frame: number;
  resumed: boolean;
  last: number;
}

/** A message as the broker hands it on; body bytes arrive as {"$bytes": base64}. */
export interface Message {
  t: "msg";
  seq: number;
  mid: string;
  from: string;
  from_device?: string;
  to?: string;
  room?: string;
  body: unknown;
  ts: number;
}

export type ArchivedMessage = Omit<Message, "seq">;

export interface Receipt {
  t: "receipt";
  id: string;
  mid: string;
  ts: number;
  status: "delivered" | "stored" | "accepted";
}

export interface ErrorFrame {
  t: "error";
  code: number;
  reason: string;
  ref?: string;
  redirect?: { ws?: string; tcp?: string; lp?: string };
  versions?: number[];
}

export interface Presence {
  t: "presence";
  user: string;
  state: PresenceState;
  status: string;
  ts: number;
  devices?: number;
}

export interface Joined {
  t: "joined";
  room: string;
  members: number;
}

export interface Left {
  t: "left";
  room: string;
}

export interface HistoryPage {
  /** Newest first. */
  messages: ArchivedMessage[];
  more: boolean;
}

/** The answer of /getFreeHostAddress (or the baseUrl itself when it has none). */
export interface Located {
  node?: string;
  ws: string;
  lp: string;
  tcp?: string;
  transport: Transport;
}

export interface Frame {
  t: string;
  [key: string]: unknown;
}

export type OutgoingMessage =
  | { to: string; room?: undefined; body: unknown; id?: string }
  | { room: string; to?: undefined; body: unknown; id?: string };

export type HistoryQuery = ({ with: string; room?: undefined } | { room: string; with?: undefined }) & {
  before?: string;
  limit?: number;
};

export interface Events {
  message: (msg: Message) => void;
  presence: (presence: Presence) => void;
  receipt: (receipt: Receipt) => void;
  joined: (joined: Joined) => void;
  left: (left: Left) => void;
  error: (error: ErrorFrame) => void;
  frame: (frame: Frame) => void;
  state: (state: ConnectionState, transport: Transport | null) => void;
  transport: (transport: Transport) => void;
  located: (where: Located) => void;
  resync: (welcome: Welcome) => void;
}

/** An error of the broker (its frame) or of the client (408 no welcome, 499 closed). */
export declare class O2OBrokerError extends Error {
  readonly code: number;
  readonly reason: string;
  readonly frame: ErrorFrame;
}

export declare class O2OBroker {
  constructor(options?: Options);
  static readonly Error: typeof O2OBrokerError;
  static supportsWebSocket(): boolean;

  readonly baseUrl: string;
  readonly device: string;
  readonly state: ConnectionState;
  readonly transport: Transport | null;
  /** The highest seq handed to the page. */
  readonly lastSeq: number;
  readonly welcome: Welcome | null;
  readonly where: Located | null;
  readonly hb: number;

  on<K extends keyof Events>(name: K, fn: Events[K]): this;
  once<K extends keyof Events>(name: K, fn: Events[K]): this;
  off<K extends keyof Events>(name: K, fn: Events[K]): this;

  connect(): Promise<Welcome>;
  send(message: OutgoingMessage): Promise<Receipt>;
  join(room: string): Promise<Joined>;
  leave(room: string): Promise<Left>;
  watch(users: string[]): void;
  unwatch(users: string[]): void;
  probe(users: string[]): void;
  setPresence(state: PresenceState, status?: string): void;
  history(query: HistoryQuery): Promise<HistoryPage>;
  close(): void;
}

export default O2OBroker;
