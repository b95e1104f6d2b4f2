// The playground page: a Customer app and a Mitra app side by side, plus an admin view.
// Protocol handling lives in client.js; this file is the UI. docs/playground.md explains it.
import { ApiError, Connection, HttpApi, newClientMsgId } from "./client.js";

const LOG_LIMIT = 400; // entries kept per frame log (older ones are dropped)
const TYPING_REPEAT_MS = 3000; // docs/protocol.md: repeat `start` every few seconds
const TYPING_IDLE_MS = 3000; // then `stop` when the user pauses
const TYPING_HIDE_MS = 5000; // receivers hide the indicator after ~5 s without a `start`
const RECEIPT_DELAY_MS = 40; // receipts for messages arriving together go out as one
const OPEN_STATES = new Set(["PAIRING", "ACTIVE", "EXPIRED", "EXTENSION_PENDING", "CLOSING"]);
const FINAL_STATES = new Set(["UNMATCHED", "CANCELLED", "COMPLETED"]);
const STATE_LABELS = {
  PAIRING: "Pairing",
  ACTIVE: "Active",
  EXPIRED: "Time's up",
  EXTENSION_PENDING: "Extension pending",
  CLOSING: "Closing",
  COMPLETED: "Completed",
  UNMATCHED: "Unmatched",
  CANCELLED: "Cancelled",
};
const NEW_NAMES = ["Ayu", "Dimas", "Putri", "Rizky", "Sinta", "Bayu", "Wulan", "Agus", "Nia", "Eka"];

// ---------------------------------------------------------------- small DOM helpers

/** h("div.cls", {attr}, ...children): element with classes, attributes and children. */
function h(tag, attrs, ...children) {
  const [name, ...classes] = tag.split(".");
  const el = document.createElement(name || "div");
  if (classes.length) el.className = classes.join(" ");
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function $(root, sel) {
  return root.querySelector(sel);
}

const rupiah = new Intl.NumberFormat("id-ID");
function price(tier) {
  if (!tier.price) return "free";
  return tier.currency === "IDR" ? `Rp ${rupiah.format(tier.price)}` : `${tier.price} ${tier.currency}`;
}

function clock(iso) {
  return iso ? new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
}

function dateTime(iso) {
  return iso ? new Date(iso).toLocaleString([], { dateStyle: "medium", timeStyle: "short" }) : "";
}

function mmss(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function stamp() {
  const d = new Date();
  return `${d.toLocaleTimeString([], { hour12: false })}.${String(d.getMilliseconds()).padStart(3, "0")}`;
}

// ---------------------------------------------------------------- frame log

/** A bounded, append-only log of frames and HTTP calls; error entries are flagged. */
class FrameLog {
  constructor(list, counter) {
    this.list = list;
    this.counter = counter;
    this.count = 0;
  }

  add(entry) {
    const { kind } = entry;
    let arrow;
    let title;
    let body;
    if (kind === "http") {
      arrow = "HTTP";
      title = `${entry.method} ${entry.path} → ${entry.status}`;
      body = { request: entry.request, response: entry.response };
      if (entry.request === undefined) delete body.request;
    } else if (kind === "ws-close") {
      arrow = "✕";
      title = `socket closed ${entry.code}${entry.reason ? ` (${entry.reason})` : ""}`;
      body = { code: entry.code, reason: entry.reason };
    } else {
      arrow = kind === "out" ? "→" : "←";
      title = entry.type;
      body = entry.frame;
    }
    const compact = JSON.stringify(body);
    const li = h(
      "li.log-entry",
      {
        dataset: {
          kind,
          type: entry.type || (kind === "http" ? `${entry.method} ${entry.path}` : kind),
          error: entry.error ? "true" : "false",
          code: entry.code || "",
        },
      },
      h("span.log-time", {}, stamp()),
      h(`span.log-dir.${kind}`, {}, arrow),
      h("span.log-type", {}, title),
      entry.code ? h("span.log-code", {}, entry.code) : null,
      h("code.log-json", {}, compact),
    );
    li.addEventListener("click", () => {
      const open = li.classList.toggle("open");
      $(li, ".log-json").textContent = open ? JSON.stringify(body, null, 2) : compact;
    });
    const stick = this.list.scrollTop + this.list.clientHeight >= this.list.scrollHeight - 8;
    this.list.append(li);
    while (this.list.childElementCount > LOG_LIMIT) this.list.firstElementChild.remove();
    this.count += 1;
    if (this.counter) this.counter.textContent = String(this.count);
    if (stick) this.list.scrollTop = this.list.scrollHeight;
  }

  clear() {
    this.list.replaceChildren();
    this.count = 0;
    if (this.counter) this.counter.textContent = "";
  }
}

// ---------------------------------------------------------------- one app pane

class Pane {
  constructor(role, page) {
    this.role = role;
    this.other = role === "customer" ? "mitra" : "customer";
    this.page = page;
    const root = document.getElementById("pane-template").content.firstElementChild.cloneNode(true);
    root.id = `pane-${role}`;
    root.dataset.role = role;
    this.root = root;
    this.log = new FrameLog($(root, ".log-list"), $(root, ".log .count"));
    $(root, ".role-label").textContent = role === "customer" ? "Customer app" : "Mitra app";
    $(root, ".log-title").textContent = role === "customer" ? "Customer frames" : "Mitra frames";
    if (role !== "mitra") $(root, ".mitra-only").remove();
    this.foreground = true; // kept across user switches, like the checkbox
    this.generation = 0; // which sign-in is current
    this.reset();
    this.bind();
  }

  reset() {
    this.user = null;
    this.http = null;
    this.conn?.close();
    this.conn = null;
    this.sessions = new Map(); // id -> session object as this party sees it
    this.messages = new Map(); // session id -> Map(seq -> message)
    this.outbox = new Map(); // client_msg_id -> {session_id, body, failed}
    this.notes = new Map(); // session id -> [{afterSeq, text, tone}]
    this.marks = new Map(); // session id -> receipts we sent {delivered, read}
    for (const t of this.receiptTimers?.values() || []) clearTimeout(t);
    this.receiptTimers = new Map(); // session id -> pending receipt timer
    this.requests = new Map(); // Mitra: session id -> chat.request data
    this.pairing = new Map(); // customer: session id -> pairing.status data
    this.warnings = new Map(); // session id -> ends_at the 1-minute warning was for
    this.tiers = new Map(); // session id -> tiers offered to extend
    this.currentId = null;
    this.options = null;
    this.tab = "chat";
    this.typingSentAt = 0;
    this.typingIdle = null;
    this.typingHide = null;
    this.viewKey = "";
    this.helloed = new Set();
  }

  bind() {
    const r = this.root;
    $(r, ".user-select").addEventListener("change", (e) => this.signIn(e.target.value));
    $(r, ".new-user").addEventListener("click", () => this.newUser());
    $(r, ".fg-toggle").addEventListener("change", (e) => this.setForeground(e.target.checked));
    $(r, ".avail-toggle")?.addEventListener("change", (e) => this.setAvailable(e.target.checked));
    $(r, ".log-clear").addEventListener("click", () => this.log.clear());
    for (const btn of r.querySelectorAll(".tabs button")) {
      btn.addEventListener("click", () => this.showTab(btn.dataset.tab));
    }
    $(r, ".composer").addEventListener("submit", (e) => {
      e.preventDefault();
      this.sendMessage();
    });
    $(r, ".composer-input").addEventListener("input", () => this.typed());
    $(r, ".end").addEventListener("click", () => this.act(`/v1/sessions/${this.currentId}/end`));
    $(r, ".closure-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.sendClosure();
    });
  }

  // ------------------------------------------------------------ users and connection

  fillUsers(users, selectedId) {
    const select = $(this.root, ".user-select");
    select.replaceChildren(
      ...users.map((u) => h("option", { value: u.id }, `${u.display_name}${u.auth_uid?.startsWith("seed-") ? "" : " (new)"}`)),
    );
    if (selectedId) select.value = selectedId;
  }

  async newUser() {
    const name = NEW_NAMES[Math.floor(Math.random() * NEW_NAMES.length)];
    const display = this.role === "mitra" ? `Bestie ${name}` : name;
    try {
      const created = await this.page.admin.post("/v1/admin/users", { role: this.role, display_name: display });
      this.page.users[this.role].push({ ...created, auth_uid: null });
      this.fillUsers(this.page.users[this.role], created.id);
      await this.signIn(created.id, created.token);
    } catch (err) {
      this.page.flash(`could not create a ${this.role}: ${err.code}`);
    }
  }

  async signIn(userId, token) {
    this.generation += 1;
    this.reset();
    this.log.clear();
    this.render();
    const user = this.page.users[this.role].find((u) => u.id === userId);
    if (!user) return;
    localStorage.setItem(`halochat.playground.${this.role}`, userId);
    try {
      if (!token) token = (await this.page.admin.post(`/v1/admin/users/${userId}/token`)).token;
    } catch (err) {
      this.page.flash(`no token for ${user.display_name}: ${err.code}`);
      return;
    }
    this.user = user;
    $(this.root, ".avatar").textContent = user.display_name.replace(/^Bestie /, "").slice(0, 1);
    // A previous user's connection and requests may still answer: they are ignored.
    const gen = ++this.generation;
    const live = (fn) => (...args) => (gen === this.generation ? fn(...args) : undefined);
    const log = live((entry) => this.log.add(entry));
    this.http = new HttpApi(token, log);
    this.conn = new Connection(
      token,
      {
        onStatus: live((s) => this.setConn(s)),
        onReady: live(() => this.resync()),
        onFrame: live((f) => this.onFrame(f)),
      },
      log,
    );
    this.conn.connect();
    if (this.role === "mitra") {
      const avail = $(this.root, ".avail-toggle");
      avail.checked = Boolean(user.available);
    }
    this.render();
  }

  setConn(status) {
    const conn = $(this.root, ".conn");
    conn.dataset.conn = status;
    $(conn, ".conn-text").textContent = { open: "online", connecting: "connecting…", closed: "offline", refused: "token refused" }[status];
  }

  /** After `ready`: hello lists every session held locally with its highest seq. */
  async resync() {
    const gen = this.generation;
    const listed = {};
    for (const id of this.sessions.keys()) listed[id] = this.maxSeq(id);
    for (const id of Object.keys(listed)) this.helloed.add(id);
    await this.hello(listed);
    if (gen !== this.generation) return;
    if (!this.foreground) this.sendAppState();
    if (this.role === "customer") await this.loadOptions();
    else await this.loadRequests();
    this.render();
  }

  async hello(sessions) {
    try {
      await this.conn.request("hello", { sessions });
    } catch (err) {
      this.page.flash(`hello failed: ${err.code}`);
    }
  }

  // ------------------------------------------------------------ server frames

  onFrame(frame) {
    const d = frame.data || {};
    switch (frame.type) {
      case "sync":
        this.onSync(d);
        break;
      case "message.new":
        this.addMessage(d.message);
        break;
      case "receipt.updated":
        this.onReceipt(d);
        break;
      case "typing":
        this.onTyping(d);
        break;
      case "pairing.status":
        this.pairing.set(d.session_id, d);
        break;
      case "chat.request":
        this.requests.set(d.session_id, d);
        break;
      case "chat.request_taken":
      case "chat.request_withdrawn":
        this.requests.delete(d.session_id);
        break;
      case "session.started":
        this.requests.delete(d.session.id);
        this.upsert(d.session, true);
        this.note(d.session.id, `Chat started with ${d.session.other_party?.name}`);
        break;
      case "pairing.failed":
        this.upsert(d.session);
        this.note(d.session_id, "No Bestie accepted in time", "warn");
        break;
      case "session.cancelled":
        this.upsert(d.session);
        break;
      case "session.one_minute_left":
        this.upsert(d.session);
        this.warnings.set(d.session_id, d.ends_at);
        this.note(d.session_id, `1 minute left (${d.remaining_seconds} s)`, "warn");
        break;
      case "session.expired":
        this.upsert(d.session);
        if (d.tiers) this.tiers.set(d.session_id, d.tiers);
        this.note(d.session_id, "Time's up", "warn");
        break;
      case "session.extension_requested":
        this.upsert(d.session);
        this.note(d.session_id, `${d.customer.name} asked to extend: ${d.extension.label}`);
        break;
      case "session.extension_answered":
        this.upsert(d.session);
        this.note(d.session_id, d.accepted ? `Extension accepted: ${d.extension.label}` : "Extension rejected", d.accepted ? "good" : "warn");
        break;
      case "session.resumed":
        this.upsert(d.session);
        this.warnings.delete(d.session_id);
        this.note(d.session_id, `Chat resumed until ${clock(d.ends_at)}`, "good");
        break;
      case "session.closing":
        this.upsert(d.session);
        this.note(d.session_id, `Chat ended (${d.reason.replaceAll("_", " ")})`);
        break;
      case "session.closure_submitted":
        this.upsert(d.session);
        break;
      case "session.completed":
        this.upsert(d.session);
        this.note(d.session_id, "Chat completed", "good");
        if (this.tab === "history") this.loadHistory();
        break;
      default:
        break; // pong, error without id (logged), frames this page does not use
    }
    this.render();
  }

  onSync(d) {
    const unlisted = {};
    for (const s of d.sessions || []) {
      this.upsert(s);
      if (!this.helloed.has(s.id)) unlisted[s.id] = 0;
    }
    // docs/protocol.md: sessions in `sync` we did not list get a second hello with 0,
    // which replays their messages.
    if (Object.keys(unlisted).length) {
      for (const id of Object.keys(unlisted)) this.helloed.add(id);
      this.hello(unlisted);
    }
  }

  /** Replace our copy of a session; watermarks and last_seq only move forward. */
  upsert(session, focus = false) {
    const old = this.sessions.get(session.id);
    if (old?.watermarks && session.watermarks) {
      for (const role of ["customer", "mitra"]) {
        for (const k of ["delivered", "read"]) {
          session.watermarks[role][k] = Math.max(session.watermarks[role][k], old.watermarks[role][k]);
        }
      }
    }
    if (old) session.last_seq = Math.max(session.last_seq || 0, old.last_seq || 0);
    this.sessions.set(session.id, session);
    if (!this.messages.has(session.id)) this.messages.set(session.id, new Map());
    // Show this session if asked to, or if it is open and nothing open is shown.
    const current = this.sessions.get(this.currentId);
    const idle = !current || FINAL_STATES.has(current.state);
    if (focus || (OPEN_STATES.has(session.state) && idle)) this.currentId = session.id;
  }

  addMessage(message) {
    const sid = message.session_id;
    if (!this.messages.has(sid)) this.messages.set(sid, new Map());
    this.messages.get(sid).set(message.seq, message);
    this.outbox.delete(message.client_msg_id);
    const s = this.sessions.get(sid);
    if (s) s.last_seq = Math.max(s.last_seq || 0, message.seq);
    if (message.sender_role === this.other) {
      this.hideTyping();
      this.scheduleReceipts(sid);
    }
  }

  onReceipt(d) {
    const s = this.sessions.get(d.session_id);
    if (!s) return;
    const mark = s.watermarks[d.by_role];
    mark.delivered = Math.max(mark.delivered, d.delivered);
    mark.read = Math.max(mark.read, d.read);
  }

  onTyping(d) {
    if (d.role !== this.other || d.session_id !== this.currentId) return;
    clearTimeout(this.typingHide);
    const el = $(this.root, ".typing");
    if (d.state === "start") {
      const s = this.sessions.get(d.session_id);
      $(el, ".typing-text").textContent = `${s?.other_party?.name || "They"} is typing…`;
      el.hidden = false;
      this.typingHide = setTimeout(() => this.hideTyping(), TYPING_HIDE_MS);
    } else {
      this.hideTyping();
    }
  }

  hideTyping() {
    clearTimeout(this.typingHide);
    $(this.root, ".typing").hidden = true;
  }

  note(sid, text, tone = "info") {
    if (!sid) return;
    if (!this.notes.has(sid)) this.notes.set(sid, []);
    this.notes.get(sid).push({ afterSeq: this.maxSeq(sid), text, tone });
  }

  maxSeq(sid) {
    let max = 0;
    for (const seq of this.messages.get(sid)?.keys() || []) max = Math.max(max, seq);
    return max;
  }

  // ------------------------------------------------------------ receipts, typing, app state

  /** One receipt for a burst of messages (a hello's replay), not one per message. */
  scheduleReceipts(sid) {
    if (this.receiptTimers.has(sid)) return;
    this.receiptTimers.set(
      sid,
      setTimeout(() => {
        this.receiptTimers.delete(sid);
        this.sendReceipts(sid);
      }, RECEIPT_DELAY_MS),
    );
  }

  /** Watermark receipts: `read` while this app shows the chat, else `delivered`. */
  async sendReceipts(sid) {
    const s = this.sessions.get(sid);
    if (!s || s.state === "PAIRING" || !this.conn) return;
    let seq = 0;
    for (const m of this.messages.get(sid)?.values() || []) {
      if (m.sender_role === this.other) seq = Math.max(seq, m.seq);
    }
    if (!seq) return;
    const mark = this.marks.get(sid) || { delivered: 0, read: 0 };
    this.marks.set(sid, mark);
    const showing = this.foreground && this.tab === "chat" && this.currentId === sid;
    const kind = showing ? "read" : "delivered";
    if (mark[kind] >= seq) return;
    mark[kind] = seq;
    if (kind === "read") mark.delivered = Math.max(mark.delivered, seq);
    try {
      await this.conn.request("receipt", { session_id: sid, kind, seq });
    } catch {
      mark[kind] = 0; // shown in the frame log; retried with the next message or focus
    }
  }

  async setForeground(on) {
    this.foreground = on;
    this.root.classList.toggle("background", !on);
    this.sendAppState();
    if (on && this.currentId) this.sendReceipts(this.currentId);
  }

  async sendAppState() {
    try {
      await this.conn?.request("app.state", { state: this.foreground ? "foreground" : "background" });
    } catch {
      /* logged */
    }
  }

  async setAvailable(on) {
    try {
      const user = await this.http.put("/v1/mitra/availability", { available: on });
      this.user.available = user.available;
      if (on) await this.loadRequests();
      else this.requests.clear();
    } catch {
      $(this.root, ".avail-toggle").checked = !on;
    }
    this.render();
  }

  typed() {
    const s = this.sessions.get(this.currentId);
    if (!s || s.state !== "ACTIVE" || !this.conn) return;
    const now = Date.now();
    if (now - this.typingSentAt > TYPING_REPEAT_MS) {
      this.typingSentAt = now;
      this.conn.request("typing", { session_id: s.id, state: "start" }).catch(() => {});
    }
    clearTimeout(this.typingIdle);
    this.typingIdle = setTimeout(() => this.stopTyping(), TYPING_IDLE_MS);
  }

  stopTyping() {
    clearTimeout(this.typingIdle);
    if (!this.typingSentAt) return;
    this.typingSentAt = 0;
    const s = this.sessions.get(this.currentId);
    if (s?.state === "ACTIVE") {
      this.conn?.request("typing", { session_id: s.id, state: "stop" }).catch(() => {});
    }
  }

  // ------------------------------------------------------------ actions

  async sendMessage() {
    const input = $(this.root, ".composer-input");
    const body = input.value.trim();
    const sid = this.currentId;
    if (!body || !sid) return;
    input.value = "";
    this.stopTyping();
    const clientMsgId = newClientMsgId();
    this.outbox.set(clientMsgId, { session_id: sid, body, failed: null });
    this.renderMessages();
    try {
      const ack = await this.conn.request("message.send", { session_id: sid, client_msg_id: clientMsgId, body });
      this.addMessage(ack.message); // the ack means "stored": one tick
    } catch (err) {
      const pending = this.outbox.get(clientMsgId);
      if (pending) pending.failed = err.code;
    }
    this.render();
  }

  async sendClosure() {
    const input = $(this.root, ".closure-input");
    const text = input.value.trim();
    if (!text) return;
    const ok = await this.act(`/v1/sessions/${this.currentId}/closure`, { text });
    if (ok) input.value = "";
  }

  /** POST an action; answers carrying a session replace our copy. */
  async act(path, body) {
    const gen = this.generation;
    try {
      const answer = await this.http.post(path, body);
      if (gen !== this.generation) return null;
      if (answer?.session) this.upsert(answer.session, true);
      this.render();
      return answer;
    } catch (err) {
      this.page.flash(`${path.split("/").pop()}: ${err.code}`);
      this.render();
      return null;
    }
  }

  async loadOptions() {
    const gen = this.generation;
    let options = null;
    try {
      options = await this.http.get("/v1/chat/options");
    } catch {
      /* logged */
    }
    if (gen !== this.generation) return;
    this.options = options;
    this.render();
  }

  async loadRequests() {
    const gen = this.generation;
    try {
      const { requests } = await this.http.get("/v1/mitra/requests");
      if (gen !== this.generation) return;
      this.requests = new Map(requests.map((r) => [r.session_id, r]));
    } catch {
      /* logged */
    }
    this.render();
  }

  async accept(sid) {
    const answer = await this.act(`/v1/sessions/${sid}/accept`);
    if (answer) {
      this.requests.delete(sid);
      this.render();
    }
  }

  async startChat(choice) {
    const answer = await this.act("/v1/sessions", choice);
    if (answer) this.note(answer.session.id, `Requested ${answer.session.tier.label} · ${price(answer.session.tier)} · transaction ${answer.transaction.status}`);
    this.render();
  }

  dismiss() {
    this.currentId = null;
    if (this.role === "customer") this.loadOptions();
    this.render();
  }

  showTab(tab) {
    this.tab = tab;
    for (const btn of this.root.querySelectorAll(".tabs button")) btn.classList.toggle("active", btn.dataset.tab === tab);
    $(this.root, ".tab-chat").hidden = tab !== "chat";
    $(this.root, ".tab-history").hidden = tab !== "history";
    if (tab === "history") this.loadHistory();
    else if (this.currentId) this.sendReceipts(this.currentId);
  }

  // ------------------------------------------------------------ history

  async loadHistory() {
    const list = $(this.root, ".history-list");
    $(this.root, ".history-detail").hidden = true;
    list.hidden = false;
    if (!this.http) return;
    const gen = this.generation;
    let page;
    try {
      page = await this.http.get("/v1/me/history?limit=20");
      if (gen !== this.generation) return;
    } catch (err) {
      list.replaceChildren(h("p.empty", {}, `history unavailable: ${err.code}`));
      return;
    }
    if (!page.sessions.length) {
      list.replaceChildren(h("p.empty", {}, "No finished conversations yet."));
      return;
    }
    list.replaceChildren(
      ...page.sessions.map((s) =>
        h(
          "button.history-item",
          { type: "button", dataset: { sessionId: s.id }, onclick: () => this.openHistory(s) },
          h("div.history-top", {}, h("b.history-partner", {}, s.other_party?.name || "—"), h("span.muted", {}, dateTime(s.completed_at))),
          h("div.muted", {}, `${s.tier.label} · ${s.total_minutes} min · ${String(s.end_reason).replaceAll("_", " ")}`),
          this.closureLines(s),
        ),
      ),
    );
  }

  closureLines(s) {
    return h(
      "div.closures",
      {},
      ...["customer", "mitra"].map((role) => {
        const c = s.closures?.[role];
        const who = role === this.role ? "You" : s[role]?.name || role;
        return h(`div.closure.${role}`, { dataset: { role } }, h("b", {}, `${who}: `), c ? c.text : h("i.muted", {}, "no closing message"));
      }),
    );
  }

  async openHistory(s) {
    const detail = $(this.root, ".history-detail");
    let page;
    try {
      page = await this.http.get(`/v1/sessions/${s.id}/messages?limit=200`);
    } catch {
      return;
    }
    $(this.root, ".history-list").hidden = true;
    detail.hidden = false;
    detail.replaceChildren(
      h("button.ghost.back", { type: "button", onclick: () => this.loadHistory() }, "← History"),
      h("h3", {}, `${s.other_party?.name} · ${dateTime(s.started_at)}`),
      h("div.transcript", {}, ...page.messages.map((m) => this.bubble(m, m.status))),
      this.closureLines(s),
    );
  }

  // ------------------------------------------------------------ rendering

  render() {
    const r = this.root;
    const s = this.sessions.get(this.currentId);
    const list = $(r, ".messages");
    const atEnd = list.scrollTop + list.clientHeight >= list.scrollHeight - 16;
    const bar = $(r, ".session-bar");
    bar.hidden = !s;
    if (s) {
      $(bar, ".partner-name").textContent = s.other_party?.name || (this.role === "customer" ? "Finding a Bestie…" : "—");
      $(bar, ".tier-label").textContent = `${s.tier.label} · ${price(s.tier)}`;
      const badge = $(bar, ".state-badge");
      badge.textContent = STATE_LABELS[s.state] || s.state;
      badge.dataset.state = s.state;
      r.dataset.state = s.state;
      r.dataset.sessionId = s.id;
    } else {
      delete r.dataset.state;
      delete r.dataset.sessionId;
    }
    this.renderChips();
    this.renderRequests();
    this.renderStage(s);
    this.renderMessages();
    this.renderDock(s);
    // Keep the newest message in view when the list or the dock below it changes size.
    if (atEnd) list.scrollTop = list.scrollHeight;
    this.tick();
    this.page.sessionsChanged();
  }

  renderChips() {
    const open = [...this.sessions.values()].filter((x) => OPEN_STATES.has(x.state) && x.state !== "PAIRING");
    const chips = $(this.root, ".chips");
    if (this.role !== "mitra" || open.length < 2) {
      chips.replaceChildren();
      return;
    }
    chips.replaceChildren(
      ...open.map((x) =>
        h(
          "button.chip",
          { type: "button", class: `chip${x.id === this.currentId ? " active" : ""}`, onclick: () => { this.currentId = x.id; this.render(); } },
          `${x.other_party?.name} · ${STATE_LABELS[x.state]}`,
        ),
      ),
    );
  }

  renderRequests() {
    const box = $(this.root, ".requests");
    if (this.role !== "mitra" || !this.requests.size) {
      box.replaceChildren();
      return;
    }
    box.replaceChildren(
      ...[...this.requests.values()].map((q) =>
        h(
          "div.request",
          { dataset: { sessionId: q.session_id } },
          h("div", {}, h("b", {}, q.customer.name), " wants to chat", h("div.muted", {}, `${q.label} · ${q.minutes} min · `, h("span.deadline", { dataset: { deadline: q.pairing_deadline } }))),
          h("button.primary.accept", { type: "button", onclick: () => this.accept(q.session_id) }, "Accept"),
        ),
      ),
    );
  }

  renderStage(s) {
    const stage = $(this.root, ".stage");
    const key = `${this.user?.id}|${s?.id}|${s?.state}|${JSON.stringify(this.options)}|${this.pairing.get(s?.id)?.offered_to_count}|${this.requests.size}|${this.conn ? 1 : 0}`;
    if (key === this.viewKey) return;
    this.viewKey = key;
    stage.replaceChildren();
    if (!this.user) {
      stage.append(h("p.empty", {}, "Pick a user above."));
      return;
    }
    if (!s) {
      if (this.role === "customer") stage.append(this.optionsView());
      else if (!this.requests.size) stage.append(h("p.empty", {}, this.user.available ? "Waiting for chat requests…" : "Switch on “Available” to receive chat requests."));
      return;
    }
    if (s.state === "PAIRING") {
      const st = this.pairing.get(s.id);
      stage.append(
        h(
          "div.pairing",
          {},
          h("div.spinner"),
          h("div", {}, h("b", {}, "Looking for a Bestie…"), h("div.muted", {}, st ? `offered to ${st.offered_to_count} Mitra${st.offered_to_count === 1 ? "" : "s"}` : "")),
          h("button.ghost.cancel", { type: "button", onclick: () => this.act(`/v1/sessions/${s.id}/cancel`) }, "Cancel"),
        ),
      );
    } else if (s.state === "UNMATCHED" || s.state === "CANCELLED") {
      stage.append(
        h(
          "div.ended",
          {},
          h("b", {}, s.state === "UNMATCHED" ? "No Bestie accepted in time." : "Request cancelled."),
          this.role === "customer" ? h("button.primary", { type: "button", onclick: () => this.dismiss() }, "Start again") : null,
        ),
      );
    }
  }

  optionsView() {
    const o = this.options;
    const box = h("div.options", {}, h("h3", {}, "Start a chat"));
    if (!o) {
      box.append(h("p.muted", {}, "Loading options…"));
      return box;
    }
    if (o.kind === "free_trial") {
      box.append(
        h("button.option.free-trial", { type: "button", onclick: () => this.startChat({ choice: "free_trial" }) }, h("b", {}, "Free trial"), h("span", {}, `${o.free_trial.minutes} min · free`)),
      );
    } else {
      for (const t of o.tiers) {
        box.append(
          h("button.option.tier", { type: "button", dataset: { tierId: t.id }, onclick: () => this.startChat({ choice: "tier", tier_id: t.id }) }, h("b", {}, t.label), h("span", {}, `${t.minutes} min · ${price(t)}`)),
        );
      }
    }
    box.append(h("button.ghost.refresh", { type: "button", onclick: () => this.loadOptions() }, "↻ refresh options"));
    return box;
  }

  bubble(m, status) {
    const mine = m.sender_role === this.role;
    return h(
      `div.msg.${mine ? "mine" : "theirs"}`,
      { dataset: { seq: m.seq ?? "", status: status || "" } },
      h("div.msg-body", {}, m.body),
      h("div.msg-meta", {}, m.created_at ? clock(m.created_at) : "", mine ? h("span.ticks", { dataset: { status }, title: status }, tickFor(status)) : null),
    );
  }

  statusOf(s, m) {
    const mark = s.watermarks?.[this.other] || { delivered: 0, read: 0 };
    if (mark.read >= m.seq) return "read";
    if (mark.delivered >= m.seq) return "delivered";
    return "sent";
  }

  renderMessages() {
    const box = $(this.root, ".messages");
    const s = this.sessions.get(this.currentId);
    const showList = s && !["PAIRING", "UNMATCHED", "CANCELLED"].includes(s.state);
    box.hidden = !showList;
    if (!showList) {
      box.replaceChildren();
      return;
    }
    const stick = box.scrollTop + box.clientHeight >= box.scrollHeight - 16;
    const items = [];
    const msgs = [...(this.messages.get(s.id)?.values() || [])].sort((a, b) => a.seq - b.seq);
    const notes = this.notes.get(s.id) || [];
    let n = 0;
    const flushNotes = (upTo) => {
      while (n < notes.length && notes[n].afterSeq <= upTo) {
        items.push(h(`div.note.${notes[n].tone}`, {}, notes[n].text));
        n += 1;
      }
    };
    flushNotes(0);
    for (const m of msgs) {
      items.push(this.bubble(m, m.sender_role === this.role ? this.statusOf(s, m) : undefined));
      flushNotes(m.seq);
    }
    flushNotes(Infinity);
    for (const [cid, p] of this.outbox) {
      if (p.session_id !== s.id) continue;
      items.push(
        h(
          "div.msg.mine.pending",
          { dataset: { clientMsgId: cid, status: p.failed ? "failed" : "pending" } },
          h("div.msg-body", {}, p.body),
          h("div.msg-meta", {}, p.failed ? h("span.failed", {}, `not sent: ${p.failed}`) : h("span.ticks.pending", { dataset: { status: "pending" } }, "sending…")),
        ),
      );
    }
    if (["CLOSING", "COMPLETED"].includes(s.state)) {
      for (const role of [this.other, this.role]) {
        const c = s.closures?.[role];
        if (!c) continue;
        const who = role === this.role ? "Your closing message" : `${s[role]?.name}’s closing message`;
        items.push(h(`div.closure-card.${role === this.role ? "mine" : "theirs"}`, { dataset: { role } }, h("div.closure-who", {}, who), h("div.closure-text", {}, c.text)));
      }
    }
    box.replaceChildren(...items);
    if (stick || items.length < 4) box.scrollTop = box.scrollHeight;
  }

  renderDock(s) {
    const r = this.root;
    const composer = $(r, ".composer");
    const closure = $(r, ".closure-form");
    const dialog = $(r, ".dialog");
    composer.hidden = !s || s.state !== "ACTIVE";
    const mine = s?.closures?.[this.role];
    closure.hidden = !s || s.state !== "CLOSING" || Boolean(mine);
    const key = `${s?.id}|${s?.state}|${s?.extension?.id}|${s?.extension?.status}|${Boolean(mine)}|${this.tiers.has(s?.id)}`;
    if (dialog.dataset.key === key) return;
    dialog.dataset.key = key;
    const content = s ? this.dialogFor(s, mine) : null;
    dialog.hidden = !content;
    dialog.replaceChildren(...(content ? [content] : []));
    if (s?.state === "EXPIRED" && this.role === "customer" && !this.tiers.has(s.id)) this.loadTiersFor(s.id);
  }

  async loadTiersFor(sid) {
    // After a reload the expired frame is gone: the same tiers come from the options.
    try {
      const o = await this.http.get("/v1/chat/options");
      if (o.kind === "tiers") this.tiers.set(sid, o.tiers);
    } catch {
      return;
    }
    this.render();
  }

  dialogFor(s, mine) {
    const name = s.other_party?.name || "";
    const sid = s.id;
    if (s.state === "EXPIRED") {
      if (this.role === "mitra") return h("div.info", {}, `Time's up. Waiting for ${name} to extend or end the chat…`);
      const tiers = this.tiers.get(sid) || [];
      return h(
        "div.extend",
        {},
        h("h4", {}, "Time's up! Extend the chat?"),
        h("div.tier-row", {}, ...tiers.map((t) => h("button.option.extend-tier", { type: "button", dataset: { tierId: t.id }, onclick: () => this.act(`/v1/sessions/${sid}/extension`, { tier_id: t.id }) }, h("b", {}, t.label), h("span", {}, price(t))))),
        h("button.ghost.decline", { type: "button", onclick: () => this.act(`/v1/sessions/${sid}/extension/decline`) }, "No thanks, end the chat"),
      );
    }
    if (s.state === "EXTENSION_PENDING") {
      const ext = s.extension;
      if (this.role === "customer") return h("div.info.waiting", {}, h("div.spinner.small"), `Menunggu konfirmasi Bestie… (${ext.label})`);
      return h(
        "div.extend",
        {},
        h("h4", {}, `${name} wants to extend: ${ext.label} · ${price(ext)}`),
        h(
          "div.tier-row",
          {},
          h("button.primary.accept-extension", { type: "button", onclick: () => this.act(`/v1/sessions/${sid}/extension/answer`, { extension_id: ext.id, accept: true }) }, "Accept"),
          h("button.danger.reject-extension", { type: "button", onclick: () => this.act(`/v1/sessions/${sid}/extension/answer`, { extension_id: ext.id, accept: false }) }, "Reject"),
        ),
      );
    }
    if (s.state === "CLOSING" && mine) return h("div.info.waiting", {}, `Waiting for ${name}’s closing message…`);
    if (s.state === "COMPLETED") {
      return h(
        "div.done",
        {},
        h("b", {}, "Chat completed."),
        h("button.primary.new-chat", { type: "button", onclick: () => this.dismiss() }, this.role === "customer" ? "Start a new chat" : "Close"),
      );
    }
    return null;
  }

  /** Countdowns: every 250 ms, from the server's ends_at / grace_deadline. */
  tick() {
    const s = this.sessions.get(this.currentId);
    const el = $(this.root, ".countdown");
    const banner = $(this.root, ".banner");
    const now = Date.now();
    let text = "";
    let warn = false;
    if (s?.state === "ACTIVE" && s.ends_at) {
      text = `${mmss(Date.parse(s.ends_at) - now)} left`;
      warn = this.warnings.get(s.id) === s.ends_at;
    } else if (s?.state === "PAIRING" && s.pairing_deadline) {
      text = `pairing ${mmss(Date.parse(s.pairing_deadline) - now)}`;
    } else if (s && ["EXPIRED", "EXTENSION_PENDING", "CLOSING"].includes(s.state) && s.grace_deadline) {
      text = `closes in ${mmss(Date.parse(s.grace_deadline) - now)}`;
    }
    el.textContent = text;
    el.classList.toggle("warn", warn);
    if (banner.hidden === warn) {
      // The banner takes room from the message list: keep its newest message in view.
      const list = $(this.root, ".messages");
      const atEnd = list.scrollTop + list.clientHeight >= list.scrollHeight - 16;
      banner.hidden = !warn;
      if (atEnd) list.scrollTop = list.scrollHeight;
    }
    if (warn) banner.textContent = `1 minute left · ${mmss(Date.parse(s.ends_at) - now)}`;
    for (const d of this.root.querySelectorAll(".deadline")) d.textContent = `expires in ${mmss(Date.parse(d.dataset.deadline) - now)}`;
  }
}

function tickFor(status) {
  return { sent: "✓", delivered: "✓✓", read: "✓✓" }[status] || "";
}

// ---------------------------------------------------------------- the page

class Page {
  constructor() {
    this.admin = null;
    this.users = { customer: [], mitra: [] };
    this.panes = {};
    this.adminLog = new FrameLog(document.getElementById("admin-log"), document.getElementById("admin-log-count"));
    this.config = null;
    const form = document.getElementById("admin-form");
    const input = document.getElementById("admin-token");
    input.value = localStorage.getItem("halochat.playground.admin") || "";
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.connect(input.value.trim());
    });
    document.getElementById("free-trial-toggle").addEventListener("change", (e) => this.setFreeTrial(e.target.checked));
    document.getElementById("timeline-load").addEventListener("click", () => this.loadTimeline());
    setInterval(() => Object.values(this.panes).forEach((p) => p.tick()), 250);
    if (input.value) this.connect(input.value);
  }

  setStatus(text, state) {
    const el = document.getElementById("admin-status");
    el.textContent = text;
    el.dataset.state = state;
  }

  flash(text) {
    this.setStatus(text, "error");
  }

  async connect(token) {
    if (!token) return;
    this.admin = new HttpApi(token, (e) => this.adminLog.add(e));
    let me;
    try {
      me = await this.admin.get("/v1/me");
      if (me.role !== "admin") throw new ApiError(403, { code: "wrong_role", message: `${me.display_name} is a ${me.role}, not an admin` });
      const [customers, mitras] = await Promise.all([this.listUsers("customer"), this.listUsers("mitra")]);
      this.users = { customer: customers, mitra: mitras };
      this.config = await this.admin.get("/v1/admin/config");
    } catch (err) {
      this.setStatus(`admin token refused: ${err.message}`, "error");
      return;
    }
    localStorage.setItem("halochat.playground.admin", token);
    this.setStatus(`connected as ${me.display_name}`, "ok");
    document.getElementById("free-trial-toggle").checked = this.config.free_trial_enabled;
    document.getElementById("intro").hidden = true;
    document.getElementById("panes").hidden = false;
    document.getElementById("admin").hidden = false;
    for (const role of ["customer", "mitra"]) {
      if (!this.panes[role]) {
        this.panes[role] = new Pane(role, this);
        document.getElementById("panes").append(this.panes[role].root);
      }
      const pane = this.panes[role];
      const list = this.users[role];
      const saved = localStorage.getItem(`halochat.playground.${role}`);
      const pick = list.find((u) => u.id === saved) || list.find((u) => u.auth_uid?.startsWith("seed-")) || list[0];
      pane.fillUsers(list, pick?.id);
      if (pick) pane.signIn(pick.id);
      else pane.render();
    }
  }

  async listUsers(role) {
    const out = [];
    let after = null;
    do {
      const page = await this.admin.get(`/v1/admin/users?role=${role}&limit=200${after ? `&after=${after}` : ""}`);
      out.push(...page.users.filter((u) => !u.disabled));
      after = page.next_after;
    } while (after && out.length < 1000);
    return out;
  }

  async setFreeTrial(on) {
    try {
      const current = await this.admin.get("/v1/admin/config");
      const { version, updated_at, ...values } = current;
      this.config = await this.admin.put("/v1/admin/config", { ...values, free_trial_enabled: on });
      this.setStatus(`free trial ${on ? "offered" : "not offered"} (config version ${this.config.version})`, "ok");
    } catch (err) {
      this.flash(`config not saved: ${err.code}`);
    }
    document.getElementById("free-trial-toggle").checked = Boolean(this.config?.free_trial_enabled);
    this.panes.customer?.loadOptions();
  }

  /** Keeps the admin's session picker in step with the sessions the panes know. */
  sessionsChanged() {
    const select = document.getElementById("timeline-session");
    const seen = new Map();
    for (const pane of Object.values(this.panes)) {
      for (const s of pane.sessions.values()) seen.set(s.id, s);
    }
    const sessions = [...seen.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
    const key = sessions.map((s) => `${s.id}:${s.state}`).join(",");
    if (select.dataset.key === key) return;
    select.dataset.key = key;
    const chosen = select.value;
    select.replaceChildren(
      ...sessions.map((s) => h("option", { value: s.id }, `${s.customer.name} ↔ ${s.mitra?.name || "…"} · ${STATE_LABELS[s.state]} · ${s.id.slice(-6)}`)),
    );
    if (sessions.some((s) => s.id === chosen)) select.value = chosen;
  }

  userName(id) {
    for (const list of Object.values(this.users)) {
      const u = list.find((x) => x.id === id);
      if (u) return u.display_name;
    }
    return null;
  }

  async loadTimeline() {
    const typed = document.getElementById("timeline-id").value.trim();
    const sid = typed || document.getElementById("timeline-session").value;
    const list = document.getElementById("timeline");
    const summary = document.getElementById("timeline-summary");
    if (!sid) return;
    list.replaceChildren();
    summary.textContent = "loading…";
    let answer;
    try {
      answer = await this.admin.get(`/v1/admin/sessions/${encodeURIComponent(sid)}/timeline`);
    } catch (err) {
      summary.textContent = `timeline unavailable: ${err.code} (${err.message})`;
      summary.dataset.error = "true";
      return;
    }
    delete summary.dataset.error;
    const events = answer.events || [];
    const first = events.length ? Date.parse(events[0].at) : 0;
    summary.textContent = `session ${answer.session_id} · ${events.length} events`;
    list.replaceChildren(
      ...events.map((ev) => {
        const actor = ev.actor || {};
        const who = actor.role === "system" ? "system" : `${this.userName(actor.id) || actor.id || ""} (${actor.role})`;
        return h(
          "li.tl-event",
          { dataset: { kind: ev.kind, actor: actor.role || "" } },
          h("div.tl-dot"),
          h(
            "div.tl-body",
            {},
            h("div.tl-head", {}, h("span.tl-kind", {}, ev.kind.replaceAll("_", " ")), h("span.tl-title", {}, describe(ev))),
            h("div.tl-meta", {}, `${new Date(ev.at).toISOString().slice(11, 23)} UTC · +${((Date.parse(ev.at) - first) / 1000).toFixed(1)} s · ${who}`),
            h("code.tl-data", {}, JSON.stringify(ev.data || {})),
          ),
        );
      }),
    );
  }
}

/** One line per timeline event (docs: GET /v1/admin/sessions/<id>/timeline). */
function describe(ev) {
  const d = ev.data || {};
  switch (ev.kind) {
    case "state_changed":
      return `${d.from ?? "∅"} → ${d.to}${d.trigger ? ` (${d.trigger})` : ""}`;
    case "timer_fired":
      return `${d.kind} timer${d.lateness_ms !== undefined ? `, ${d.lateness_ms} ms late` : ""}`;
    case "extension_requested":
      return d.label || d.tier_id || "";
    case "extension_answered":
      return d.accepted === undefined ? "" : d.accepted ? "accepted" : "rejected";
    case "closure_submitted":
      return d.text ? `“${d.text}”` : d.role || "";
    case "push_sent":
    case "push_failed":
      return [d.type, d.reason].filter(Boolean).join(" · ");
    default:
      return "";
  }
}

window.addEventListener("DOMContentLoaded", () => {
  window.playground = new Page();
});
