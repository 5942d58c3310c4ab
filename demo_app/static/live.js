// One document over /v1/docs/{id}/live: the README's thin client (rebase.js), plus what the demo shows
// around it: region failover, an offline switch that holds edits, per-edit consistency and ack latency.
import { applyOps, applyPatches, moveIndex, transform } from "./rebase.js";
import { cpLength, cpSplice } from "./units.js";
import { diffSplice } from "./splice.js";

// Close codes after which reconnecting cannot help (the token or the document is refused).
const FATAL = new Set([4400, 4401, 4403, 1008, 1009]);
const RETRY_MS = 300; // the first retry; doubling up to RETRY_MAX_MS while nothing answers
const RETRY_MAX_MS = 5000;
// A region closes a websocket frame over its ws_max_size (64 KiB by default) with 1009: a paste is cut
// into inserts of at most PIECE UTF-16 units, and a batch takes ops up to BATCH_BYTES of JSON.
const PIECE = 8000;
const BATCH_BYTES = 30000; // plus at most one piece (24 KB of UTF-8): under 64 KiB
const encoder = new TextEncoder();

// One insert of a long text as several inserts in a row (never splitting a surrogate pair; each index
// counts code points, as the op's own does).
export function pieces(op) {
  if (op.op !== "insert" || typeof op.text !== "string" || op.text.length <= PIECE) return [op];
  const out = [];
  let at = 0, index = op.index;
  while (at < op.text.length) {
    let end = Math.min(at + PIECE, op.text.length);
    const code = op.text.charCodeAt(end - 1);
    if (end < op.text.length && code >= 0xd800 && code <= 0xdbff) end -= 1;
    const text = op.text.slice(at, end);
    out.push({ ...op, index, text });
    index += cpLength(text);
    at = end;
  }
  return out;
}
const MAX_LOG = 50;

const clone = (v) => structuredClone(v);

// Patches that turn old into new (a snapshot that replaced what the client held is rebased like a
// remote change): a text or list becomes one delete and one insert around their common ends.
export function diffPatches(oldValue, newValue, path = []) {
  const out = [];
  const isMap = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
  for (const key of Object.keys(oldValue)) {
    if (!(key in newValue)) out.push({ path: [...path, key], remove: true });
  }
  for (const [key, nv] of Object.entries(newValue)) {
    const ov = oldValue[key], p = [...path, key];
    if (isMap(ov) && isMap(nv)) out.push(...diffPatches(ov, nv, p));
    else if (typeof ov === "string" && typeof nv === "string") {
      // In code points, as the store counts, around common ends that never cut a character.
      const { index, remove, text } = cpSplice(ov, diffSplice(ov, nv));
      if (remove > 0) out.push({ path: p, delete: { index, count: remove } });
      if (text) out.push({ path: p, insert: { index, text } });
    } else if (Array.isArray(ov) && Array.isArray(nv)) {
      const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
      let start = 0;
      while (start < ov.length && start < nv.length && same(ov[start], nv[start])) start++;
      let end = 0;
      while (end < ov.length - start && end < nv.length - start && same(ov[ov.length - 1 - end], nv[nv.length - 1 - end])) end++;
      const removed = ov.length - start - end, added = nv.slice(start, nv.length - end);
      if (removed > 0) out.push({ path: p, delete: { index: start, count: removed } });
      if (added.length > 0) {
        out.push({ path: p, insert: { index: start, values: added } });
      }
    } else if (JSON.stringify(ov) !== JSON.stringify(nv)) out.push({ path: p, value: clone(nv) });
  }
  return out;
}

export class LiveDoc extends EventTarget {
  /**
   * @param {object} opts docId, regions ({name: httpUrl}), region (the home region), token, name;
   *   sendSoon (optional): runs a function a little later, for the send of local edits (the page sends
   *   after the frame that shows a keystroke, and several keystrokes typed before it as one batch).
   */
  constructor({ docId, regions, region, token, sendSoon = null }) {
    super();
    this.sendSoon = sendSoon;
    this._sendQueued = false;
    this.docId = docId;
    this.regions = regions;
    this.region = region; // the region this window talks to now
    this.token = token;
    this.confirmed = {};
    this.version = null;
    this.versionRegion = null; // the region whose stream this version came from
    this.inflight = null; // {id, frame, shown, sentAt, w}
    this.queued = [];
    this.unacked = new Map(); // id -> {frame, region, changeSeen, sentAt, w}
    this.carets = new Map(); // name -> {path, index}: moved past remote patches
    this.presence = new Map(); // client -> state
    this.prefix = Math.random().toString(36).slice(2, 10);
    this.seq = 0;
    this.level = "one";
    this.offline = false;
    this.ws = null;
    this.connected = false;
    this.fatal = null;
    this.log = []; // recent batches: {id, w, ops, status, ms, detail}
    this.failovers = [];
    this.ownPresence = null;
    this._attempts = 0; // connections to this region that never opened, in a row
    this._failures = 0; // ... to any region
    this._value = null; // value(), until the next change of confirmed, inflight or queued
  }

  // What the user sees: the confirmed value with the batch in flight and the queue on top. Kept until
  // the next change (a page renders several times a keystroke: each copy of a 100 KB note costs), so
  // callers read it and never change it.
  value() {
    if (this._value === null) {
      this._value = applyOps(clone(this.confirmed), (this.inflight ? this.inflight.shown : []).concat(this.queued));
    }
    return this._value;
  }

  unsynced() {
    return this.queued.length + (this.inflight ? this.inflight.shown.length : 0);
  }

  // Local ops, with indexes into value(), behind the batch in flight.
  edit(ops) {
    if (this.fatal) return;
    this._value = null;
    const split = ops.flatMap((op) => pieces({ ...op }));
    this.queued.push(...split);
    // Other people's carets move past what is typed before them, as they do past remote patches (until
    // their next presence, which reads the text with this edit in it).
    for (const caret of this.carets.values()) caret.index = moveIndex(caret.path, caret.index, split);
    this._emit("local", {});
    if (!this.sendSoon) this._flush();
    else if (!this._sendQueued) {
      this._sendQueued = true;
      this.sendSoon(() => {
        this._sendQueued = false;
        this._flush();
      });
    }
  }

  setPresence(state) {
    this.ownPresence = state;
    if (this.connected) this._send({ type: "presence", state });
  }

  connect() {
    if (this.ws || this.offline || this.fatal) return;
    if (this.versionRegion && this.versionRegion !== this.region) this._moveRegions();
    const base = this.regions[this.region].replace(/^http/, "ws");
    const params = new URLSearchParams({ token: this.token });
    if (this.version) params.set("version", this.version);
    const url = `${base}/v1/docs/${encodeURIComponent(this.docId)}/live?${params}`;
    const ws = new WebSocket(url);
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.connected = true;
      this._attempts = 0;
      this._emit("status", {});
      this._resend();
      if (this.ownPresence) this._send({ type: "presence", state: this.ownPresence });
    };
    ws.onmessage = (event) => {
      const data = JSON.parse(event.data);
      for (const message of Array.isArray(data) ? data : [data]) this._receive(message);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.connected = false;
      this.presence.clear();
      this.carets.clear();
      if (FATAL.has(event.code)) {
        this.fatal = `refused by ${this.region}: ${event.code} ${event.reason}`;
      } else if (!this.offline) {
        // A connection that never opened, twice in a row: the region is down, so fail over to the next.
        this._attempts = opened ? 0 : this._attempts + 1;
        this._failures = opened ? 0 : this._failures + 1;
        if (this._attempts >= 2) this._failover();
        setTimeout(() => this.connect(), Math.min(RETRY_MS * 2 ** Math.max(0, this._failures - 2), RETRY_MAX_MS));
      }
      this._emit("status", {});
    };
  }

  setOffline(offline) {
    this.offline = offline;
    if (offline && this.ws) {
      const ws = this.ws;
      this.ws = null;
      this.connected = false;
      this.presence.clear();
      ws.close(1000, "offline");
    } else if (!offline) this.connect();
    this._emit("status", {});
  }

  switchRegion(region) {
    if (!(region in this.regions) || region === this.region) return;
    this.region = region;
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      this.connected = false;
      ws.close(1000, "switching region");
    }
    this.connect();
    this._emit("status", {});
  }

  // Private: the protocol.

  _failover() {
    const names = Object.keys(this.regions);
    const next = names[(names.indexOf(this.region) + 1) % names.length];
    this.failovers.push({ from: this.region, to: next, at: new Date().toISOString() });
    this.region = next;
    this._attempts = 0;
  }

  _send(frame) {
    if (this.ws && this.connected) this.ws.send(JSON.stringify(frame));
  }

  _flush() {
    if (!this.connected || this.inflight || !this.queued.length || !this.version) return;
    this._value = null;
    const id = `${this.prefix}-${this.seq++}`;
    let take = 0, bytes = 0;
    while (take < this.queued.length && (take === 0 || bytes < BATCH_BYTES)) {
      bytes += encoder.encode(JSON.stringify(this.queued[take])).length;
      take += 1;
    }
    const ops = this.queued.slice(0, take);
    const frame = { type: "batch", id, ops, version: this.version, w: this.level };
    const now = performance.now();
    this.inflight = { id, frame, shown: ops, sentAt: now, w: this.level };
    this.unacked.set(id, { frame, region: this.region, changeSeen: false, sentAt: now, w: this.level });
    this.queued = this.queued.slice(take);
    this._record({ id, w: this.level, ops: frame.ops.length, status: "sent", region: this.region });
    this._send(frame);
  }

  // Onto another region: it may lack what the last one held (edits only that region acknowledged), so
  // the page asks it for a snapshot (no ?version=), and the batch in flight, whose effect never came
  // back, goes back to the head of the queue: rebased over the snapshot's difference like everything
  // typed since, it is sent with the new region's version, so its indexes read against what that region
  // holds. (Its id is no use there: a region remembers the ids of its own connections.) A batch whose
  // change did come back is in the old region's log and replicates from there; only its ack is lost.
  _moveRegions() {
    this._value = null;
    if (this.inflight) {
      this.queued = this.inflight.shown.concat(this.queued);
      this.unacked.delete(this.inflight.id);
      this._update(this.inflight.id, { status: `moved to ${this.region}` });
      this.inflight = null;
    }
    for (const [id, entry] of this.unacked) {
      if (entry.region !== this.region) {
        this.unacked.delete(id);
        this._update(id, { status: "committed; ack lost with its region" });
      }
    }
    this.version = null;
    this.versionRegion = null;
  }

  // After a reconnect to the same region: batches not acknowledged yet go again with their ids (the
  // server acknowledges a known id again and never applies it twice).
  _resend() {
    for (const entry of this.unacked.values()) this._send(entry.frame);
    this._flush();
  }

  _receive(message) {
    this._value = null;
    switch (message.type) {
      case "snapshot": {
        const patches = diffPatches(this.confirmed, message.value);
        this.confirmed = message.value;
        this.version = message.version;
        this.versionRegion = this.region;
        this._rebase(patches);
        break;
      }
      case "change": {
        try {
          applyPatches(this.confirmed, message.patches);
        } catch (err) {
          // A change that does not fit: resync from a fresh snapshot.
          this.version = null;
          if (this.ws) this.ws.close(4000, "resync");
          return;
        }
        this.version = message.version;
        this.versionRegion = this.region;
        const mine = this.inflight && message.batch === this.inflight.id;
        if (message.batch && this.unacked.has(message.batch)) this.unacked.get(message.batch).changeSeen = true;
        if (mine) {
          this.inflight = null;
          this._emit("change", { patches: [], origin: "local" });
        } else this._rebase(message.patches, message.origin);
        break;
      }
      case "ack":
      case "error": {
        const entry = this.unacked.get(message.id);
        this.unacked.delete(message.id);
        if (this.inflight && message.id === this.inflight.id) {
          this.inflight = null;
          // The refused batch leaves the value shown: dropped, so that the page shows it at once.
          if (message.type === "error") this._emit("change", { patches: [], origin: "local", dropped: true });
        }
        if (entry) {
          const ms = Math.round(performance.now() - entry.sentAt);
          if (message.type === "ack") {
            // How many replicas held the batch when it was acknowledged, of how many its level needed
            // (a region that does not say leaves the page to show its level's lower bound).
            const counted = Number.isInteger(message.reached) && Number.isInteger(message.needed);
            const detail = counted ? { reached: message.reached, needed: message.needed } : undefined;
            this._update(message.id, { status: message.again ? "ack (again)" : "ack", ms, detail });
          }
          else {
            const detail = message.detail || {};
            this._update(message.id, { status: `${message.status} ${message.error}`, ms, detail, message: message.message });
          }
        } else if (message.type === "error") {
          this._record({ id: message.id, status: `${message.status} ${message.error}`, message: message.message });
        }
        this._emit("ack", { message });
        break;
      }
      case "presence":
        if (message.state === null) {
          this.presence.delete(message.client);
          this.carets.delete(message.client);
        } else {
          this.presence.set(message.client, message.state);
          const caret = message.state && message.state.caret;
          if (caret && Array.isArray(caret.path)) this.carets.set(message.client, { path: caret.path, index: caret.index });
        }
        this._emit("presence", {});
        break;
      default:
        break;
    }
    this._flush();
  }

  // Remote patches (in confirmed's coordinates): move the pending ops past them, and then the carets
  // past them as moved past those ops, so what the user typed stays where it was typed.
  _rebase(patches, origin = "remote") {
    let remote = patches;
    if (this.inflight) [this.inflight.shown, remote] = transform(this.inflight.shown, remote);
    [this.queued, remote] = transform(this.queued, remote);
    for (const caret of this.carets.values()) caret.index = moveIndex(caret.path, caret.index, remote);
    this._emit("change", { patches: remote, origin });
  }

  _record(entry) {
    this.log.unshift({ ...entry, at: performance.now() });
    if (this.log.length > MAX_LOG) this.log.pop();
    this._emit("log", {});
  }

  _update(id, fields) {
    const entry = this.log.find((e) => e.id === id);
    if (entry) Object.assign(entry, fields);
    this._emit("log", {});
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
