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
//
// A token travels in the subprotocol "xraptor.bearer.<base64url token>", offered
// with "xraptor" (browsers cannot set an Authorization header on a WebSocket); the
// server's connect guards read it as handshake.token. A refused handshake (an
// Origin the server does not allow, a guard's Refuse) rejects connect() with code
// "closed": browsers do not show the HTTP status to scripts.
//
// Replies are {request_id, payload, header, method}. Error responses (header
// "error") reject with an XRaptorError carrying .code and .response.

/** An error response from the server, or a client-side failure (code "timeout", "closed"). */
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

export class XRaptorClient {
  /**
   * Open a connection. `url` defaults to the server this module was loaded from,
   * mount path included (see defaultUrl).
   * @param {string} [url]
   * @param {{timeout?: number, token?: string}} [options] timeout in milliseconds
   *   (default 10000); token: a bearer token for the server's connect guards
   * @returns {Promise<XRaptorClient>}
   */
  static connect(url, options = {}) {
    const client = new XRaptorClient(url ?? defaultUrl(), options);
    return client._opened.then(() => client);
  }

  constructor(url, { timeout = 10000, token = null } = {}) {
    this.url = url;
    this.timeout = timeout;
    this._pending = new Map(); // request_id -> {resolve, reject, timer}
    this._streams = new Map(); // request_id -> subscription state
    this._closed = false;
    this.onclose = null;
    this._ws = new WebSocket(url, tokenSubprotocols(token));
    this._opened = new Promise((resolve, reject) => {
      this._ws.addEventListener("open", () => resolve(), { once: true });
      this._ws.addEventListener(
        "error",
        () => reject(new XRaptorError("closed", `could not connect to ${url}`)),
        { once: true },
      );
    });
    this._ws.addEventListener("message", (event) => this._onMessage(event.data));
    this._ws.addEventListener("close", (event) => this._onClose(event));
  }

  get closed() {
    return this._closed;
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

  /** Send a GET, POST or PUT; resolves with the reply, rejects with XRaptorError. */
  request(method, route, payload = "", header = {}) {
    const requestId = newId();
    return new Promise((resolve, reject) => {
      if (this._closed) {
        reject(new XRaptorError("closed", "the connection is closed"));
        return;
      }
      const timer = setTimeout(() => {
        this._pending.delete(requestId);
        reject(new XRaptorError("timeout", `no reply to ${method} ${route} in ${this.timeout} ms`));
      }, this.timeout);
      this._pending.set(requestId, { resolve, reject, timer });
      try {
        this._send(requestId, route, method, payload, header);
      } catch (error) {
        clearTimeout(timer);
        this._pending.delete(requestId);
        reject(error);
      }
    });
  }

  /**
   * Open a stream: SUB now, `onMessage(response)` for each push (gap notices have
   * header {notice: "gap"}), `onError(error)` if the server refuses the SUB or the
   * connection closes. Returns {request_id, ready, unsubscribe()}: `ready` is a
   * promise that resolves once the server acknowledged the SUB (the stream is
   * subscribed, its rooms too) and rejects with the XRaptorError of a refusal.
   */
  subscribe(route, payload = "", header = {}, onMessage = () => {}, onError = null) {
    const requestId = newId();
    const body = encodePayload(payload);
    const state = { route, payload: body, header, onMessage, onError, open: true, acked: false };
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
    const fail = (error) => {
      if (!state.open) return;
      state.open = false;
      this._streams.delete(requestId);
      if (!state.acked) state.refuse(error);
      if (state.onError) state.onError(error);
      else console.error("xraptor stream ended:", error);
    };
    state.fail = fail;
    this._streams.set(requestId, state);
    try {
      // {"ack": true}: the server answers {"ack": true} once the stream is subscribed
      this._send(requestId, route, "SUB", body, { ...(header ?? {}), ack: true });
    } catch (error) {
      queueMicrotask(() => fail(error));
    }
    return {
      request_id: requestId,
      ready,
      unsubscribe: () => {
        if (!state.open) return;
        state.open = false;
        if (!state.acked) state.refuse(new XRaptorError("closed", "unsubscribed before the acknowledgment"));
        this._streams.delete(requestId);
        if (this._ws.readyState === WebSocket.OPEN) {
          this._send(requestId, route, "UNSUB", body, header);
        }
      },
    };
  }

  close() {
    this._ws.close(1000);
  }

  _send(requestId, route, method, payload, header) {
    if (this._ws.readyState !== WebSocket.OPEN) {
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
      if (isError) stream.fail(XRaptorError.fromResponse(response));
      else if (!stream.acked && response.header.ack === true) {
        stream.acked = true;
        stream.ack();
      } else stream.onMessage(response);
      return;
    }
    if (isError && !response.request_id) console.warn("xraptor error:", response.payload);
  }

  _onClose(event) {
    this._closed = true;
    const error = new XRaptorError("closed", `the connection closed (code ${event.code})`);
    for (const pending of this._pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(error);
    }
    this._pending.clear();
    for (const stream of [...this._streams.values()]) stream.fail(error);
    if (typeof this.onclose === "function") this.onclose(event);
  }
}

export default XRaptorClient;
