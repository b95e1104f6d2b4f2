// halochat protocol client: the part of the playground an app developer ports to the app.
// Only the documented API: HTTP (OpenAPI at /docs) and the WebSocket protocol
// (docs/protocol.md). No framework, no build step.

const FRAME_TIMEOUT_MS = 10000;
const RECONNECT_MAX_MS = 15000;
const AUTH_FAILED = 4401; // docs/protocol.md: never retry with the same token

/** An HTTP or WebSocket error answer: `code` is the machine-readable ErrorCode. */
export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = error?.code || "unknown";
    this.details = error?.details;
  }
}

/** A UUID for client_msg_id (crypto.randomUUID needs a secure context; this does not). */
export function newClientMsgId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Hides bearer tokens in what the frame log shows. */
function redact(value) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    const out = {};
    for (const [k, v] of Object.entries(value)) {
      out[k] = k === "token" && typeof v === "string" ? `${v.slice(0, 12)}…(redacted)` : redact(v);
    }
    return out;
  }
  return Array.isArray(value) ? value.map(redact) : value;
}

/** The JSON HTTP API with a bearer token; every call is reported to `log`. */
export class HttpApi {
  constructor(token, log) {
    this.token = token;
    this.log = log;
  }

  async call(method, path, body) {
    const headers = { Authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      this.log?.({ kind: "http", method, path, status: 0, request: body, error: true, code: "network" });
      throw new ApiError(0, { code: "network", message: String(err) });
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = { raw: text };
    }
    const failed = !response.ok;
    this.log?.({
      kind: "http",
      method,
      path,
      status: response.status,
      request: redact(body),
      response: redact(data),
      error: failed,
      code: failed ? data?.error?.code || `http_${response.status}` : undefined,
    });
    if (failed) throw new ApiError(response.status, data?.error);
    return data;
  }

  get(path) {
    return this.call("GET", path);
  }
  post(path, body) {
    return this.call("POST", path, body);
  }
  put(path, body) {
    return this.call("PUT", path, body);
  }
}

/**
 * One WebSocket per app instance (docs/protocol.md#connection):
 * open -> `auth` frame -> `ready` -> `hello` (resync) -> live frames.
 * Frames that expect an answer carry an id; `request()` resolves with the ack's data (or
 * the pong's) and rejects with an ApiError for an error frame. Reconnects with backoff
 * unless the token was refused (close code 4401).
 *
 * handlers: onFrame(frame) for every server event, onReady(readyData) after each
 * (re)connect (send hello there), onStatus("connecting" | "open" | "closed" | "refused").
 */
export class Connection {
  constructor(token, handlers, log) {
    this.token = token;
    this.handlers = handlers;
    this.log = log;
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map();
    this.closedByUs = false;
    this.retryMs = 500;
    this.retryTimer = null;
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    return `${scheme}://${location.host}/ws`;
  }

  connect() {
    this.closedByUs = false;
    this.handlers.onStatus?.("connecting");
    const ws = new WebSocket(this.url());
    this.ws = ws;
    ws.onopen = () => {
      // Browsers cannot set headers on the upgrade: authenticate with the first frame.
      this.send({ type: "auth", data: { token: this.token } });
    };
    ws.onmessage = (event) => this.receive(event.data);
    ws.onclose = (event) => this.closed(ws, event);
  }

  closed(ws, event) {
    if (ws !== this.ws) return;
    this.log?.({ kind: "ws-close", code: event.code, reason: event.reason, error: event.code === AUTH_FAILED });
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject(new ApiError(0, { code: "disconnected", message: "connection closed" }));
    }
    this.pending.clear();
    if (this.closedByUs) {
      this.handlers.onStatus?.("closed");
      return;
    }
    if (event.code === AUTH_FAILED) {
      this.handlers.onStatus?.("refused");
      return;
    }
    this.handlers.onStatus?.("closed");
    this.retryTimer = setTimeout(() => this.connect(), this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, RECONNECT_MAX_MS);
  }

  close() {
    this.closedByUs = true;
    clearTimeout(this.retryTimer);
    this.ws?.close(1000);
  }

  send(frame) {
    this.log?.({ kind: "out", frame: redact(frame), type: frame.type });
    this.ws.send(JSON.stringify(frame));
  }

  /** Sends a frame with an id; resolves with the answer's data. */
  request(type, data) {
    const id = `c-${this.nextId++}`;
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
        reject(new ApiError(0, { code: "disconnected", message: "not connected" }));
        return;
      }
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ApiError(0, { code: "timeout", message: `no answer to ${type}` }));
      }, FRAME_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      this.send(data === undefined ? { type, id } : { type, id, data });
    });
  }

  receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      this.log?.({ kind: "in", type: "(not JSON)", frame: text, error: true, code: "invalid_json" });
      return;
    }
    const isError = frame.type === "error";
    this.log?.({ kind: "in", type: frame.type, frame, error: isError, code: frame.error?.code });
    if ((frame.type === "ack" || frame.type === "pong" || isError) && frame.id && this.pending.has(frame.id)) {
      const { resolve, reject, timer } = this.pending.get(frame.id);
      clearTimeout(timer);
      this.pending.delete(frame.id);
      if (isError) reject(new ApiError(0, frame.error));
      else resolve(frame.data || {});
      return;
    }
    if (frame.type === "ready") {
      this.retryMs = 500;
      this.handlers.onStatus?.("open");
      this.handlers.onReady?.(frame.data);
      return;
    }
    this.handlers.onFrame?.(frame);
  }
}
