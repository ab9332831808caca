// xraptor browser client: a dependency-free ES module.
//
// Every xraptor server serves this file at /_xraptor/client.js:
//
//   import { XRaptorClient } from "/_xraptor/client.js";
//   const client = await XRaptorClient.connect();  // the server this module came from
//   const authed = await XRaptorClient.connect(undefined, { token: "..." });
//   const reply = await client.post("/route", { any: "json" }, { token: "..." });
//   const sub = client.subscribe("/chat_messages", { chat_id: "lobby" }, {}, (msg) => {});
//   await sub.ready;   // subscribed (rejects if the server refused the SUB)
//   sub.unsubscribe();
//   const lasting = await XRaptorClient.connect(undefined, { reconnect: true, token: fetchToken });
//
// A token travels in the subprotocol "xraptor.bearer.<base64url token>", offered
// with "xraptor" (browsers cannot set an Authorization header on a WebSocket); the
// server's connect guards read it as handshake.token. A refused handshake (an
// Origin the server does not allow, a guard's Refuse) rejects connect() with code
// "closed": browsers do not show the HTTP status to scripts.
//
// Replies are {request_id, payload, header, method}. Error responses (header
// "error") reject with an XRaptorError carrying .code and .response.
//
// With {reconnect: true} (or {reconnect: {initialDelay, maxDelay, maxAttempts}}, in
// milliseconds), a dropped connection is opened again after a random wait (full
// jitter, doubling up to maxDelay), the token (a function may give it) asked for
// again, and every stream subscribed again with a new request_id and "since" its
// last positions: its callback sees one stream. Requests in flight fail with code
// "connection_lost"; nothing is retried. close() stops reconnecting.

/**
 * An error response from the server, or a client-side failure (code "timeout",
 * "closed", "connection_lost").
 */
export class XRaptorError extends Error {
  constructor(code, message, response = null) {
    super(`${code}: ${message}`);
    this.name = "XRaptorError";
    this.code = code;
    this.response = response;
  }

  static fromResponse(response) {
    let code = String(response.header.error ?? "error");
    let message = response.payload;
    try {
      const data = JSON.parse(response.payload);
      if (data && typeof data === "object") {
        code = String(data.code ?? code);
        message = String(data.message ?? message);
      }
    } catch (_) {
      // the payload is not JSON: keep it as the message
    }
    return new XRaptorError(code, message, response);
  }
}

function newId() {
  if (globalThis.crypto && typeof globalThis.crypto.randomUUID === "function") {
    return globalThis.crypto.randomUUID().replaceAll("-", "");
  }
  let id = "";
  for (let i = 0; i < 32; i += 1) id += Math.floor(Math.random() * 16).toString(16);
  return id;
}

function encodePayload(payload) {
  if (payload === undefined || payload === null) return "";
  return typeof payload === "string" ? payload : JSON.stringify(payload);
}

/** The token to send now: `token`, or what the function `token` returns (awaited). */
async function resolveToken(token) {
  return typeof token === "function" ? await token() : token;
}

/** The subprotocols that carry `token`: ["xraptor", "xraptor.bearer.<base64url>"]. */
function tokenSubprotocols(token) {
  if (token === undefined || token === null) return [];
  if (typeof token !== "string" || token === "") {
    throw new TypeError("token must be a non-empty string");
  }
  let binary = "";
  for (const byte of new TextEncoder().encode(token)) binary += String.fromCharCode(byte);
  const base64url = btoa(binary).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
  return ["xraptor", `xraptor.bearer.${base64url}`];
}

// Where every server serves this module, below its mount path ("" at the root).
const CLIENT_PATH = "/_xraptor/client.js";

/**
 * The default WebSocket URL: the server this module was loaded from. Served at
 * `<mount>/_xraptor/client.js`, the module connects to `ws(s)://host<mount>/`
 * (`ws://host/` for a server at the root, as the demo is); a copy served from any
 * other path connects to the page's own host.
 */
function defaultUrl() {
  const here = new URL(import.meta.url);
  const served = here.protocol === "http:" || here.protocol === "https:";
  if (served && here.pathname.endsWith(CLIENT_PATH)) {
    const mount = here.pathname.slice(0, -CLIENT_PATH.length);
    return `${here.protocol === "https:" ? "wss:" : "ws:"}//${here.host}${mount}/`;
  }
  const { protocol, host } = globalThis.location;
  return `${protocol === "https:" ? "wss:" : "ws:"}//${host}/`;
}

/** The reconnection policy of `options.reconnect` (false, true, or its settings). */
function reconnectPolicy(reconnect) {
  if (reconnect === undefined || reconnect === null || reconnect === false) return null;
  const given = reconnect === true ? {} : reconnect;
  if (typeof given !== "object") {
    throw new TypeError("reconnect must be true, false or {initialDelay, maxDelay, maxAttempts}");
  }
  const { initialDelay = 100, maxDelay = 10000, maxAttempts = null } = given;
  if (!(initialDelay > 0)) throw new RangeError(`initialDelay must be positive, got ${initialDelay}`);
  if (!(maxDelay >= initialDelay)) {
    throw new RangeError(`maxDelay must be at least initialDelay (${initialDelay}), got ${maxDelay}`);
  }
  if (maxAttempts !== null && !(Number.isInteger(maxAttempts) && maxAttempts >= 1)) {
    throw new RangeError(`maxAttempts must be an integer from 1, or null; got ${maxAttempts}`);
  }
  return {
    maxAttempts,
    /** Full jitter: a random wait up to min(maxDelay, initialDelay * 2 ** attempt). */
    delay: (attempt) => Math.random() * Math.min(maxDelay, initialDelay * 2 ** Math.min(attempt, 64)),
  };
}

// the gap notice of a stream re-subscribed with no position to resume from
const RECONNECT_GAP_PAYLOAD = JSON.stringify({
  code: "gap",
  message:
    "the connection to the server dropped and the stream had no position to resume from; " +
    "messages published meanwhile may have been missed",
});

export class XRaptorClient {
  /**
   * Open a connection. `url` defaults to the server this module was loaded from,
   * mount path included (see defaultUrl).
   * @param {string} [url]
   * @param {{timeout?: number, token?: string | (() => string | Promise<string>),
   *   reconnect?: boolean | {initialDelay?: number, maxDelay?: number, maxAttempts?: number | null}}}
   *   [options] timeout in milliseconds (default 10000); token: a bearer token for the
   *   server's connect guards, or a function returning one, called on every (re)connect;
   *   reconnect: reopen a dropped connection (delays in milliseconds)
   * @returns {Promise<XRaptorClient>} rejects if the first connection fails (not retried)
   */
  static connect(url, options = {}) {
    const client = new XRaptorClient(url ?? defaultUrl(), options);
    return client._opened.then(() => client);
  }

  constructor(url, { timeout = 10000, token = null, reconnect = false } = {}) {
    this.url = url;
    this.timeout = timeout;
    this._token = token;
    this._policy = reconnectPolicy(reconnect);
    this._pending = new Map(); // request_id -> {resolve, reject, timer}
    this._streams = new Map(); // request_id -> subscription state
    this._waiting = new Set(); // requests waiting for a reconnection: {send, reject, timer}
    this._closing = false;
    this._failures = 0; // failed attempts since the connection last held
    this._backoff = null; // the pending wait before an attempt: {timer, resolve}
    this._ws = null;
    /** "connecting", "open", "reconnecting" or "closed" */
    this.state = "connecting";
    /** how many times the client reconnected (and subscribed its streams again) */
    this.reconnects = 0;
    /** called with the close event once the client is closed for good */
    this.onclose = null;
    /** called after each reconnection, once the streams' SUBs are sent again */
    this.onreconnect = null;
    this._opened = this._open().then(() => {
      this.state = "open";
    });
    this._opened.catch(() => {
      this.state = "closed";
    });
  }

  get closed() {
    return this.state === "closed";
  }

  get(route, payload = "", header = {}) {
    return this.request("GET", route, payload, header);
  }

  post(route, payload = "", header = {}) {
    return this.request("POST", route, payload, header);
  }

  put(route, payload = "", header = {}) {
    return this.request("PUT", route, payload, header);
  }

  /**
   * Send a GET, POST or PUT; resolves with the reply, rejects with XRaptorError.
   * While the client reconnects, the request waits for the connection (within its
   * timeout); one in flight when the connection dropped rejects with code
   * "connection_lost" (the server may have handled it; nothing is retried).
   */
  request(method, route, payload = "", header = {}) {
    const requestId = newId();
    return new Promise((resolve, reject) => {
      if (this.state === "closed") {
        reject(new XRaptorError("closed", "the connection is closed"));
        return;
      }
      const waiter = { reject };
      const timer = setTimeout(() => {
        this._pending.delete(requestId);
        this._waiting.delete(waiter);
        const waited = waiter.send ? ` (not reconnected to ${this.url})` : "";
        reject(new XRaptorError("timeout", `no reply to ${method} ${route} in ${this.timeout} ms${waited}`));
      }, this.timeout);
      waiter.timer = timer;
      const send = () => {
        waiter.send = null;
        this._pending.set(requestId, { resolve, reject, timer });
        try {
          this._send(requestId, route, method, payload, header);
        } catch (error) {
          clearTimeout(timer);
          this._pending.delete(requestId);
          reject(error);
        }
      };
      if (this._reconnecting()) {
        waiter.send = send;
        this._waiting.add(waiter);
      } else {
        send();
      }
    });
  }

  /**
   * Open a stream: SUB now, `onMessage(response)` for each push (gap and unrecovered
   * notices have header {notice: ...}), `onError(error)` if the server refuses the
   * SUB or the connection closes for good. Returns {request_id, ready, positions,
   * unsubscribe()}: `ready` is a promise that resolves once the server acknowledged
   * the SUB (the stream is subscribed, its rooms too) and rejects with the
   * XRaptorError of a refusal; `positions` is the last position received per room
   * with history; `request_id` changes when a reconnecting client subscribes again.
   */
  subscribe(route, payload = "", header = {}, onMessage = () => {}, onError = null) {
    const body = encodePayload(payload);
    const given = header ?? {};
    const since = given.since && typeof given.since === "object" ? given.since : {};
    const state = {
      requestId: newId(),
      route,
      payload: body,
      header: given,
      positions: { ...since },
      onMessage,
      onError,
      open: true,
      acked: false,
      resubscribing: false,
      toldGap: false,
      unsent: false,
    };
    const ready = new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new XRaptorError("timeout", `no acknowledgment of SUB ${route} in ${this.timeout} ms`)),
        this.timeout,
      );
      state.ack = () => {
        clearTimeout(timer);
        resolve();
      };
      state.refuse = (error) => {
        clearTimeout(timer);
        reject(error);
      };
    });
    ready.catch(() => {}); // a refusal also reaches onError; awaiting `ready` is optional
    state.fail = (error) => {
      if (!state.open) return;
      state.open = false;
      this._streams.delete(state.requestId);
      if (!state.acked) state.refuse(error);
      if (state.onError) state.onError(error);
      else console.error("xraptor stream ended:", error);
    };
    this._streams.set(state.requestId, state);
    if (this._reconnecting()) {
      state.unsent = true; // sent with the streams subscribed again
    } else {
      try {
        // {"ack": true}: the server answers {"ack": true} once the stream is subscribed
        this._send(state.requestId, route, "SUB", body, { ...given, ack: true });
      } catch (error) {
        queueMicrotask(() => state.fail(error));
      }
    }
    return {
      get request_id() {
        return state.requestId;
      },
      get positions() {
        return { ...state.positions };
      },
      ready,
      unsubscribe: () => {
        if (!state.open) return;
        state.open = false;
        if (!state.acked) state.refuse(new XRaptorError("closed", "unsubscribed before the acknowledgment"));
        this._streams.delete(state.requestId);
        if (this._ws && this._ws.readyState === WebSocket.OPEN && this.state === "open") {
          this._send(state.requestId, route, "UNSUB", body, given);
        }
      },
    };
  }

  /** Close the connection and stop reconnecting. */
  close() {
    this._closing = true;
    if (this._backoff) {
      clearTimeout(this._backoff.timer);
      this._backoff.resolve();
      this._backoff = null;
    }
    if (this._ws && this._ws.readyState === WebSocket.OPEN) {
      this._ws.close(1000); // _onClose ends the rest
    } else if (this.state !== "closed") {
      this._end(new XRaptorError("closed", "the client was closed"), null);
    }
  }

  // ----- the connection ------------------------------------------------------------------

  /** Reconnecting, or about to (the socket closed, its close event not handled yet). */
  _reconnecting() {
    if (this.state === "reconnecting") return true;
    const dying = !this._ws || this._ws.readyState !== WebSocket.OPEN;
    return this._policy !== null && !this._closing && this.state === "open" && dying;
  }

  /** Open a WebSocket (the token asked for now); resolves once it is open. */
  async _open() {
    const protocols = tokenSubprotocols(await resolveToken(this._token));
    if (this._closing) throw new XRaptorError("closed", "the client was closed");
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url, protocols);
      let opened = false;
      ws.addEventListener(
        "open",
        () => {
          if (this._closing) {
            ws.close(1000);
            reject(new XRaptorError("closed", "the client was closed"));
            return;
          }
          opened = true;
          this._ws = ws;
          resolve();
        },
        { once: true },
      );
      ws.addEventListener("message", (event) => {
        if (ws === this._ws) this._onMessage(event.data);
      });
      ws.addEventListener("close", (event) => {
        if (!opened) reject(new XRaptorError("closed", `could not connect to ${this.url} (code ${event.code})`));
        else if (ws === this._ws) this._onClose(event);
      });
    });
  }

  _send(requestId, route, method, payload, header) {
    if (!this._ws || this._ws.readyState !== WebSocket.OPEN) {
      throw new XRaptorError("closed", "the connection is not open");
    }
    this._ws.send(
      JSON.stringify({
        request_id: requestId,
        payload: encodePayload(payload),
        header: header ?? {},
        route,
        method,
      }),
    );
  }

  _onMessage(raw) {
    let response;
    try {
      const data = JSON.parse(raw);
      response = {
        request_id: String(data.request_id ?? ""),
        payload: String(data.payload ?? ""),
        header: data.header && typeof data.header === "object" ? data.header : {},
        method: String(data.method ?? ""),
      };
    } catch (_) {
      console.warn("xraptor: ignored a frame that is not JSON");
      return;
    }
    const isError = Object.prototype.hasOwnProperty.call(response.header, "error");
    const pending = this._pending.get(response.request_id);
    if (pending) {
      this._pending.delete(response.request_id);
      clearTimeout(pending.timer);
      if (isError) pending.reject(XRaptorError.fromResponse(response));
      else pending.resolve(response);
      return;
    }
    const stream = this._streams.get(response.request_id);
    if (stream) {
      const { room, position } = response.header;
      if (isError) {
        const again = stream.resubscribing; // refused now: the others may be subscribed
        stream.fail(XRaptorError.fromResponse(response));
        if (again) this._heldIfSubscribed();
      } else if (!stream.acked && response.header.ack === true) {
        stream.acked = true;
        if (stream.resubscribing) {
          stream.resubscribing = false;
          stream.toldGap = false;
          this._heldIfSubscribed();
        } else stream.ack();
      } else {
        if (typeof room === "string" && typeof position === "string") stream.positions[room] = position;
        stream.onMessage(response);
      }
      return;
    }
    if (isError && !response.request_id) console.warn("xraptor error:", response.payload);
  }

  _onClose(event) {
    this._ws = null;
    if (!this._policy || this._closing) {
      this._end(new XRaptorError("closed", `the connection closed (code ${event.code})`), event);
      return;
    }
    this.state = "reconnecting";
    const lost = (what) =>
      new XRaptorError(
        "connection_lost",
        `the connection dropped (code ${event.code}) before ${what}; nothing is retried`,
      );
    for (const pending of this._pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(lost("the reply (the server may have handled the request)"));
    }
    this._pending.clear();
    for (const stream of [...this._streams.values()]) {
      // a SUB in flight fails like a request; the others are subscribed again
      if (!stream.acked && !stream.resubscribing && !stream.unsent) stream.fail(lost("the acknowledgment"));
    }
    this._reconnect(event);
  }

  async _reconnect(event) {
    const policy = this._policy;
    let last = event;
    while (!this._closing) {
      if (policy.maxAttempts !== null && this._failures >= policy.maxAttempts) {
        const attempts = this._failures;
        this._end(
          new XRaptorError("connection_lost", `gave up reconnecting to ${this.url} after ${attempts} attempt(s)`),
          last,
        );
        return;
      }
      await new Promise((resolve) => {
        this._backoff = { timer: setTimeout(resolve, policy.delay(this._failures)), resolve };
      });
      this._backoff = null;
      if (this._closing) return;
      this._failures += 1;
      try {
        await this._open();
      } catch (error) {
        last = { code: 1006, reason: String(error.message ?? error) };
        continue;
      }
      this.state = "open";
      this._resubscribe();
      return;
    }
  }

  /** Subscribe every stream again (new ids, since its positions), then send what waited. */
  _resubscribe() {
    const streams = [...this._streams.values()];
    this._streams.clear();
    for (const stream of streams) {
      stream.requestId = newId();
      this._streams.set(stream.requestId, stream);
      const header = { ...stream.header, ack: true };
      if (stream.unsent) {
        stream.unsent = false; // its first SUB: `since` as given
      } else {
        stream.acked = false;
        stream.resubscribing = true;
        if (Object.keys(stream.positions).length > 0) header.since = { ...stream.positions };
        else if (!stream.toldGap) {
          stream.toldGap = true;
          stream.onMessage({
            request_id: stream.requestId,
            payload: RECONNECT_GAP_PAYLOAD,
            header: { notice: "gap" },
            method: "SUB",
          });
        }
      }
      try {
        this._send(stream.requestId, stream.route, "SUB", stream.payload, header);
      } catch (_) {
        return; // dropped again: _onClose takes over
      }
    }
    const waiting = [...this._waiting];
    this._waiting.clear();
    for (const waiter of waiting) waiter.send();
    this._heldIfSubscribed();
    this.reconnects += 1;
    if (typeof this.onreconnect === "function") this.onreconnect();
  }

  /** The connection held: every stream is subscribed again, attempts count from 0. */
  _heldIfSubscribed() {
    for (const stream of this._streams.values()) if (stream.resubscribing) return;
    this._failures = 0;
  }

  /** Closed for good: fail what waits, end the streams, tell onclose. */
  _end(error, event) {
    this.state = "closed";
    for (const pending of this._pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(error);
    }
    this._pending.clear();
    for (const waiter of this._waiting) {
      clearTimeout(waiter.timer);
      waiter.reject(error);
    }
    this._waiting.clear();
    for (const stream of [...this._streams.values()]) stream.fail(error);
    if (typeof this.onclose === "function") this.onclose(event ?? { code: 1000, reason: error.message });
  }
}

export default XRaptorClient;
