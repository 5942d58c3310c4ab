// Load driver for the Hocuspocus peer: E Yjs editors typing into one shared Y.Text.
//
// Usage: node bench/collab/yjs_driver.mjs --url ws://127.0.0.1:PORT --editors 50 --rate 5 --seconds 60
//
// Each editor is a Y.Doc behind its own HocuspocusProvider on its own
// websocket (the `ws` package, as Node 20 has no WebSocket of its own),
// with the provider's defaults (every local update sent at once, no
// batching) and no awareness (the pycrdt side sends none either; the
// typing keeps the connection alive). It types one ASCII character per
// transaction at --rate per second (open loop: keystroke k is scheduled at
// phase + k / rate whatever happened before), at a cursor that follows its
// own typing (a Yjs relative position) and jumps to a random spot every few
// characters.
//
// What is measured, per keystroke, from the moment it is typed and sent
// (editors never wait for acks, so a server stall cannot hold sends back
// and hide itself; how late the driver types against the schedule is
// reported apart, as send_lag_ms_p99: when it grows, the driver's own
// process is short of CPU and every latency it reports is inflated by as
// much):
// - ack: the Hocuspocus server answers every update message with a
//   SyncStatus message once the update is applied in memory (not stored:
//   stores are debounced); the provider counts it down in `unsyncedChanges`.
//   Acks come in order on one connection, so each count-down acknowledges
//   the oldest keystroke not yet acknowledged.
// - remote-visible: the moment another editor's document applied it (its
//   `update` event, read with Y.parseUpdateMeta). A fresh editor that only
//   inserts one ASCII character per transaction gives its k-th keystroke
//   clock k, so (client id, clock) keys the keystroke's send time.
//
// Standard output: {"event":"start"} when typing starts and {"event":"end"}
// when it stops (the harness reads the server's CPU time at both), then one
// JSON line with the results. Every loop is bounded: the typing by
// --seconds, the wait for stragglers by --drain.
import { createHash } from "node:crypto";
import { parseArgs } from "node:util";
import { HocuspocusProvider } from "@hocuspocus/provider";
import * as prng from "lib0/prng";
import WebSocket from "ws";
import * as Y from "yjs";

const { values: opts } = parseArgs({
	options: {
		url: { type: "string" },
		name: { type: "string", default: "doc" },
		editors: { type: "string", default: "50" },
		rate: { type: "string", default: "5" },
		seconds: { type: "string", default: "60" },
		drain: { type: "string", default: "15" },
		seed: { type: "string", default: "12" },
	},
});
const url = opts.url ?? "";
if (!/^ws:\/\/(127\.|localhost)/.test(url)) {
	console.error("--url ws://127.0.0.1:PORT is required (loopback only)");
	process.exit(2);
}
const editorCount = Number(opts.editors);
const rate = Number(opts.rate);
const seconds = Number(opts.seconds);
const drainSeconds = Number(opts.drain);
if (!(editorCount >= 1 && rate > 0 && seconds > 0)) {
	console.error("--editors, --rate and --seconds must be positive");
	process.exit(2);
}

const emit = (record) => process.stdout.write(`${JSON.stringify(record)}\n`);
const now = () => performance.now() / 1000;
const sleep = (s) => new Promise((resolve) => setTimeout(resolve, Math.max(0, s * 1000)));

// What all editors share: each client's keystroke schedule, and the latencies measured.
const sentAt = new Map(); // client id -> when its k-th keystroke was typed and sent
const ackLatency = [];
const visibleLatency = [];
const sendLag = [];
let ackedInWindow = 0;
let windowEnd = Number.POSITIVE_INFINITY;

class Editor {
	constructor(index, gen) {
		this.index = index;
		this.gen = gen;
		this.doc = new Y.Doc();
		this.text = this.doc.getText("text");
		this.clientId = this.doc.clientID;
		this.char = String.fromCharCode(97 + (index % 26));
		this.sent = 0;
		this.acked = 0;
		this.seen = new Map(); // other client id -> how many of its keystrokes this editor shows
		this.cursor = null;
		this.runLeft = 0;
		this.lastUnsynced = 0;
		this.typing = false;
		sentAt.set(this.clientId, []);
		this.provider = new HocuspocusProvider({
			url,
			name: opts.name,
			document: this.doc,
			awareness: null,
			WebSocketPolyfill: WebSocket,
		});
		this.provider.on("unsyncedChanges", ({ number }) => this.onUnsynced(number));
		this.doc.on("update", (update, origin) => {
			if (origin === this.provider) this.onRemote(update);
		});
	}

	// Resolves once the initial sync is done and acknowledged.
	async ready(timeout) {
		const deadline = now() + timeout;
		while (!(this.provider.isSynced && this.provider.unsyncedChanges === 0)) {
			if (now() > deadline) throw new Error(`editor ${this.index} did not sync`);
			await sleep(0.01);
		}
		this.lastUnsynced = 0;
		this.typing = true;
	}

	onUnsynced(number) {
		if (!this.typing) return;
		const t = now();
		const times = sentAt.get(this.clientId);
		for (let n = this.lastUnsynced - number; n > 0 && this.acked < this.sent; n--) {
			ackLatency.push(t - times[this.acked]);
			this.acked++;
			if (t <= windowEnd) ackedInWindow++;
		}
		this.lastUnsynced = number;
	}

	onRemote(update) {
		const t = now();
		const { to } = Y.parseUpdateMeta(update);
		for (const [client, end] of to) {
			if (client === this.clientId) continue;
			const times = sentAt.get(client);
			if (times === undefined) continue;
			const seen = this.seen.get(client) ?? 0;
			const last = Math.min(end, times.length);
			for (let k = seen; k < last; k++) visibleLatency.push(t - times[k]);
			if (last > seen) this.seen.set(client, last);
		}
	}

	nextIndex() {
		if (this.cursor === null || this.runLeft <= 0) {
			this.runLeft = prng.int32(this.gen, 3, 30);
			return prng.int32(this.gen, 0, this.text.length);
		}
		return Y.createAbsolutePositionFromRelativePosition(this.cursor, this.doc).index;
	}

	async typeUntil(t0, tEnd) {
		const phase = prng.real53(this.gen) / rate;
		const times = sentAt.get(this.clientId);
		for (let k = 0; ; k++) {
			const due = t0 + phase + k / rate;
			if (due >= tEnd) return;
			await sleep(due - now());
			const index = this.nextIndex();
			const typed = now();
			times.push(typed);
			sendLag.push(typed - due);
			this.sent++;
			// The provider sends the update from inside the transaction's update event.
			this.text.insert(index, this.char);
			this.cursor = Y.createRelativePositionFromTypeIndex(this.text, index + 1, -1);
			this.runLeft--;
		}
	}

	caughtUp(sentBy) {
		if (this.acked < this.sent) return false;
		for (const [client, n] of sentBy) {
			if (client !== this.clientId && n > 0 && (this.seen.get(client) ?? 0) < n) return false;
		}
		return true;
	}
}

function percentileMs(values, q) {
	if (values.length === 0) return null;
	const sorted = Float64Array.from(values).sort();
	return Math.round(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] * 1e5) / 100;
}

const gen = prng.create(Number(opts.seed));
const editors = [];
for (let i = 0; i < editorCount; i++) editors.push(new Editor(i, prng.create(prng.uint32(gen, 0, 2 ** 31))));
await Promise.all(editors.map((e) => e.ready(30)));

const t0 = now() + 0.2;
const tEnd = t0 + seconds;
windowEnd = tEnd;
const mark = async (event, at) => {
	await sleep(at - now());
	emit({ event });
};
await Promise.all([mark("start", t0), mark("end", tEnd), ...editors.map((e) => e.typeUntil(t0, tEnd))]);

// Stragglers: wait (bounded) until every keystroke is acknowledged and visible everywhere.
const sentBy = new Map(editors.map((e) => [e.clientId, e.sent]));
const drainDeadline = now() + drainSeconds;
while (now() < drainDeadline && !editors.every((e) => e.caughtUp(sentBy))) await sleep(0.05);
const texts = editors.map((e) => e.text.toString());
for (const e of editors) e.provider.destroy();

const sent = editors.reduce((n, e) => n + e.sent, 0);
emit({
	event: "result",
	peer: "hocuspocus",
	editors: editorCount,
	rate,
	seconds,
	offered_ops: Math.round(editorCount * rate * seconds),
	sent_ops: sent,
	acked_ops: editors.reduce((n, e) => n + e.acked, 0),
	acked_in_window: ackedInWindow,
	ops_per_s: Math.round((ackedInWindow / seconds) * 10) / 10,
	ack_ms: { p50: percentileMs(ackLatency, 0.5), p99: percentileMs(ackLatency, 0.99) },
	visible_ms: { p50: percentileMs(visibleLatency, 0.5), p99: percentileMs(visibleLatency, 0.99) },
	visible_missing: sent * (editorCount - 1) - visibleLatency.length,
	send_lag_ms_p99: percentileMs(sendLag, 0.99),
	unreadable_updates: 0,
	texts_identical: new Set(texts).size === 1,
	text_length: texts[0].length,
	text_sha256: createHash("sha256").update(texts[0], "utf8").digest("hex"),
	acked_by_client: Object.fromEntries(editors.map((e) => [String(e.clientId), e.acked])),
});
// The providers' timers (reconnect back-off, awareness checks) would keep the process alive.
process.exit(0);
