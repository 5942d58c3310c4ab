// The notes board: one live document per board, one region per window (?region=us).
//
// The board document: {"notes": {ID: note}}; a note is
//   title      a multi-value register: concurrent sets stay as siblings, shown until one is picked or retyped;
//   body       collaborative text (insert/delete at indexes read against the version the page holds);
//   checklist  {"order": list of item ids, "items": {ITEM: {"text": LWW register, "done": enable-wins flag}}}:
//              a list of opaque values cannot change one item's flag in place (a toggle would be a delete and
//              an insert, which concurrent toggles duplicate), while a map of items merges each field by its
//              own type, and the list of ids keeps the order with the sequence CRDT's merge;
//   votes      a counter;  tags  an add-wins set.
// Deleting a note deletes its key (observed-remove: an edit concurrent with the delete survives).
import { LiveDoc } from "./live.js";
import { moveIndex, transform } from "./rebase.js";
import { diffSplice, inputSplice, patchSplices, prefixSplices, spliceText, textSplice } from "./splice.js";
import { cpSplice, hasSurrogate, toCp, toUnits } from "./units.js";
import { editOutcome, startPanel } from "./panel.js";

const params = new URLSearchParams(location.search);
const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
};
// Writing a node's text replaces it and invalidates layout even when it is the same: set only changes.
const setText = (node, text) => {
  if (node.textContent !== text) node.textContent = text;
};
const CHECK_MS = 500; // a pause in typing after which the textarea is compared with what the page sent
// Work that may wait for the frame after a keystroke: the frame that shows the keystroke carries only
// the textarea's own layout and paint, and this runs right after it (its changes show a frame later).
const afterFrame = (fn) => requestAnimationFrame(() => setTimeout(fn, 0));
// What only reports on typing (the unsynced count, the edits table, our own batch coming back) renders at
// most this often: each render is a frame of its own (style, layout, paint, commit of the page), and
// while typing at 25 keys a second two or three of them a keystroke took the CPU the keystrokes wait for.
const STATUS_MS = 150;
// A task after the current one: posted from a frame's callback, it runs once that frame is painted.
const painted = [];
const paintChannel = new MessageChannel();
paintChannel.port1.onmessage = () => painted.shift()();
const afterPaint = (fn) => {
  painted.push(fn);
  paintChannel.port2.postMessage(null);
};
// The send of local edits: after the frame that shows the keystroke (a websocket send costs about a
// millisecond of the main thread, which the keystroke's frame need not wait for), or within SEND_MS
// where no frame comes (a hidden page draws none).
const SEND_MS = 50;
const sendSoon = (fn) => {
  let done = false;
  const once = () => {
    if (!done) {
      done = true;
      fn();
    }
  };
  requestAnimationFrame(() => afterPaint(once));
  setTimeout(once, SEND_MS);
};
const COLORS = ["#e8590c", "#2b8a3e", "#1971c2", "#ae3ec9", "#c2255c", "#0c8599"];
const newId = (p) => `${p}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;

// Measurements the browser tests read (performance.now() based; see tests/demo). work: per keystroke,
// the main thread's time on it: edit (beforeinput to the end of our input handler: the textarea's own
// edit, the layout it forces, our handlers), handler (our input handler alone), frame (the frame that
// shows it, from its animation frame callbacks to the task after its paint).
const stats = { local: [], keydowns: [], remote: [], work: [] };

async function main() {
  const config = await (await fetch("/demo/config.json")).json();
  const regionNames = Object.keys(config.regions);
  const region = regionNames.includes(params.get("region")) ? params.get("region") : regionNames[0];
  const role = params.get("role") === "read" ? "read" : "readwrite";
  const board = params.get("board") || "board-demo";
  const name = params.get("name") || localStorage.getItem("crdtstore-name") || `user-${Math.random().toString(36).slice(2, 5)}`;
  const color = COLORS[[...name].reduce((a, c) => a + c.charCodeAt(0), 0) % COLORS.length];

  const doc = new LiveDoc({ docId: board, regions: config.regions, region, token: config.tokens[role], sendSoon });
  // remote: the remote patches not yet on screen (null: none), shown at the next frame (see main).
  const ui = { doc, board, name, color, role, siblings: {}, cards: new Map(), focusNote: null, remote: null };
  window.demo = { doc, stats, ui };

  // Header controls.
  $("#name").value = name;
  $("#name").onchange = (e) => {
    ui.name = e.target.value || name;
    localStorage.setItem("crdtstore-name", ui.name);
    sendPresence(ui);
  };
  const select = $("#region-select");
  for (const r of regionNames) select.append(el("option", { value: r, textContent: r }));
  select.value = region;
  select.onchange = () => doc.switchRegion(select.value);
  $("#level").value = params.get("w") || "one";
  doc.level = $("#level").value;
  $("#level").onchange = (e) => { doc.level = e.target.value; };
  $("#offline").onchange = (e) => doc.setOffline(e.target.checked);
  $("#new-note").onclick = () => {
    const id = newId("n");
    doc.edit([{ op: "set", path: ["notes", id, "title"], value: "Untitled" }]);
  };
  if (role === "read") {
    $("#new-note").disabled = true;
    document.body.classList.add("read-only");
  }

  let renderQueued = false;
  const renderSoon = () => {
    if (renderQueued) return;
    renderQueued = true;
    afterFrame(() => { renderQueued = false; render(ui); });
  };
  let statusQueued = false, statusAt = 0;
  const statusSoon = () => {
    if (statusQueued) return;
    statusQueued = true;
    setTimeout(() => afterFrame(() => {
      statusQueued = false;
      statusAt = performance.now();
      render(ui);
      renderEdits(ui);
    }), Math.max(0, statusAt + STATUS_MS - performance.now()));
  };
  // Remote changes show in the next frame, however many arrive before it: setting a textarea's value
  // lays its whole text out again (tens of ms for 100 KB on a loaded machine), so once a frame at most,
  // and never forced early by a read of the layout. Until then the textarea holds what it held; an
  // edit typed meanwhile is moved past the waiting patches (commitSplice) as the rebase moves any.
  const remoteSoon = (patches) => {
    if (ui.remote === null) {
      ui.remote = [];
      requestAnimationFrame(() => {
        if (ui.remote !== null) render(ui, null, true);
      });
    }
    ui.remote.push(...patches);
  };
  doc.addEventListener("change", (e) => {
    // Our own batch coming back changes nothing on screen in the common case: it waits with the rest
    // of the status (a keystroke's frame then holds the textarea's own work only). A refused one goes
    // from the screen at once: an edit typed on a textarea that still shows it would land off by it.
    if (e.detail.origin !== "local") remoteSoon(e.detail.patches);
    else if (e.detail.dropped) render(ui);
    else statusSoon();
    // Siblings are not in the live value (it shows one of them): ask the region after a remote change
    // (a concurrent title can arrive without changing the value shown) and after our own title edits.
    if (e.detail.origin !== "local" || ui.titleEdited) {
      ui.titleEdited = false;
      fetchSiblingsSoon(ui);
    }
  });
  // An edit typed into a textarea is on screen already (the status waits); any other local edit shows at
  // once, for the same reason as a refused batch.
  doc.addEventListener("local", () => {
    if (ui.typing) statusSoon();
    else render(ui);
  });
  doc.addEventListener("presence", renderSoon);
  doc.addEventListener("status", () => {
    renderSoon();
    if (doc.connected) sendPresence(ui); // after a failover, others see the region this window is on now
  });
  doc.addEventListener("ack", statusSoon);
  doc.addEventListener("log", statusSoon);
  doc.connect();
  setInterval(() => sendPresence(ui), 10000); // presence expires after 30 s without a refresh
  startPanel({ doc, board, regions: regionNames });
  render(ui);
}

// Rendering: cards are keyed by note id and updated in place, so focus, caret and scroll survive.

// remotePatches: the remote patches since the last render (the carets and the mirror follow them);
// inFrame: called from an animation frame callback, so this frame is the one that shows it.
function render(ui, remotePatches = null, inFrame = false) {
  const { doc } = ui;
  if (ui.remote !== null) {
    remotePatches = ui.remote.concat(remotePatches ?? []);
    ui.remote = null;
  }
  const value = doc.value();
  const notes = value.notes && typeof value.notes === "object" ? value.notes : {};
  const ids = Object.keys(notes).sort();
  const boardEl = $("#board");
  for (const [id, card] of ui.cards) {
    if (!(id in notes)) {
      card.root.remove();
      ui.cards.delete(id);
    }
  }
  ids.forEach((id, n) => {
    let card = ui.cards.get(id);
    if (!card) {
      card = makeCard(ui, id);
      ui.cards.set(id, card);
    }
    if (boardEl.children[n] !== card.root) boardEl.insertBefore(card.root, boardEl.children[n] || null);
    updateCard(ui, card, notes[id], remotePatches, inFrame);
  });
  renderHeader(ui);
}

function renderHeader(ui) {
  const { doc } = ui;
  setText($("#region"), doc.region + (ui.role === "read" ? " · read-only" : ""));
  if ($("#region-select").value !== doc.region) $("#region-select").value = doc.region;
  const unsynced = doc.unsynced();
  setText($("#unsynced"), `${unsynced} unsynced`);
  $("#unsynced").classList.toggle("dirty", unsynced > 0);
  const status = $("#status");
  setText(status, doc.fatal ? doc.fatal : doc.offline ? "offline (edits queue here)" : doc.connected ? "live" : "connecting…");
  status.classList.toggle("down", !doc.connected);
  const people = [...doc.presence.values()].filter((p) => p && p.name).map((p) => `${p.name} (${p.region})`);
  setText($("#people"), people.length ? `here: ${people.join(", ")}` : "");
  const banner = $("#banner");
  const last = doc.failovers[doc.failovers.length - 1];
  banner.hidden = !last;
  if (last) {
    banner.textContent = `Region ${last.from} did not answer: this window now talks to ${last.to}, `
      + "from its snapshot, with the edits not yet acknowledged rebased onto it and sent again.";
  }
}

function makeCard(ui, id) {
  const { doc } = ui;
  const path = (...rest) => ["notes", id, ...rest];
  const readOnly = ui.role === "read";
  const title = el("input", { className: "title", disabled: readOnly });
  title.dataset.testid = "title";
  const commitTitle = () => {
    ui.titleEdited = true;
    doc.edit([{ op: "set", path: path("title"), value: title.value }]);
  };
  title.onchange = commitTitle;
  const siblings = el("div", { className: "siblings", hidden: true });
  siblings.dataset.testid = "siblings";
  const del = el("button", { textContent: "×", title: "delete note", disabled: readOnly });
  del.dataset.testid = "delete-note";
  del.onclick = () => doc.edit([{ op: "delete", path: ["notes", id] }]);

  const body = el("textarea", { className: "body", spellcheck: false, readOnly });
  body.dataset.testid = "body";
  // Under the textarea, a copy of the start of its text (transparent) that other people's carets are
  // measured against (see renderCarets); the carets are drawn in a layer above, so moving one lays
  // out nothing.
  const mirrorText = document.createTextNode("");
  const mirror = el("div", { className: "mirror" }, mirrorText);
  const caretsInner = el("div");
  const carets = el("div", { className: "carets" }, caretsInner);
  let before = null; // the selection before the input event under way
  body.addEventListener("keydown", (e) => {
    stats.keydowns.push({ t: performance.timeOrigin + e.timeStamp, key: e.key });
    ui.pendingKey = e.timeStamp;
  });
  let editStart; // performance.now() at the beforeinput of the edit under way
  body.addEventListener("beforeinput", () => {
    editStart = performance.now();
    before = { start: body.selectionStart, end: body.selectionEnd };
  });
  body.addEventListener("input", (e) => {
    const h0 = performance.now();
    // Timed from the frame that shows the keystroke to the task after its paint: asked for first, so
    // that the send after that frame (sendSoon) comes after the measure too.
    const t0 = ui.pendingKey, work = { edit: 0, handler: 0 };
    ui.pendingKey = undefined;
    if (t0 !== undefined) {
      requestAnimationFrame(() => {
        const f0 = performance.now();
        stats.local.push(f0 - t0);
        afterPaint(() => stats.work.push({ ...work, frame: performance.now() - f0 }));
      });
    }
    // The edit from the selection before and the caret after, in O(edit): reading body.value builds
    // the whole text. Where the event does not tell, compare texts (as every event did before).
    const caret = body.selectionStart === body.selectionEnd ? body.selectionEnd : null;
    let splice = inputSplice(before, e.inputType, e.data, caret);
    before = null;
    const prior = card.shown, astral = card.astral;
    if (splice) {
      card.shown = spliceText(prior, [splice]);
      card.astral ||= hasSurrogate(splice.text);
    } else {
      const after = body.value;
      splice = textSplice(prior, after, body.selectionEnd);
      card.shown = after;
      card.astral = hasSurrogate(after);
    }
    commitSplice(ui, card, splice, prior, astral);
    sendPresence(ui, id, body);
    // Once typing pauses, a whole comparison vouches for the splices read off the events.
    clearTimeout(card.checkTimer);
    card.checkTimer = setTimeout(() => reconcile(ui, card), CHECK_MS);
    const h1 = performance.now();
    work.edit = h1 - (editStart ?? h0);
    work.handler = h1 - h0;
    editStart = undefined;
  });
  for (const type of ["keyup", "mouseup", "focus"]) body.addEventListener(type, () => sendPresence(ui, id, body));
  body.addEventListener("scroll", () => {
    mirror.scrollTop = body.scrollTop;
    caretsInner.style.transform = `translateY(${-body.scrollTop}px)`;
  });

  const list = el("ul", { className: "checklist" });
  list.dataset.testid = "checklist";
  const itemInput = el("input", { placeholder: "add a checklist item", disabled: readOnly });
  const addItem = el("form", {}, itemInput);
  addItem.onsubmit = (e) => {
    e.preventDefault();
    if (!itemInput.value) return;
    const order = checklistOf(doc.value(), id).order;
    const item = newId("i");
    doc.edit([
      { op: "insert", path: path("checklist", "order"), index: order.length, values: [item] },
      { op: "set", path: path("checklist", "items", item, "text"), value: itemInput.value, lww: true },
    ]);
    itemInput.value = "";
  };
  const votes = el("button", { className: "vote", disabled: readOnly });
  votes.dataset.testid = "vote";
  votes.onclick = () => doc.edit([{ op: "increment", path: path("votes") }]);
  const tags = el("span", { className: "tags" });
  tags.dataset.testid = "tags";
  const tagInput = el("input", { placeholder: "+ tag", disabled: readOnly });
  const addTag = el("form", {}, tagInput);
  addTag.onsubmit = (e) => {
    e.preventDefault();
    if (tagInput.value) doc.edit([{ op: "add", path: path("tags"), value: tagInput.value }]);
    tagInput.value = "";
  };
  const root = el(
    "article", { className: "note" },
    el("div", { className: "title-row" }, title, del),
    siblings,
    el("div", { className: "body-wrap" }, mirror, body, carets),
    list, addItem,
    el("div", { className: "meta" }, votes, tags, addTag),
  );
  root.dataset.id = id;
  root.dataset.testid = "note";
  const card = {
    root, title, siblings, body, mirror, mirrorText, caretsInner, list, votes, tags, path,
    shown: "", // what the textarea holds, as far as the page's edits and renders tell
    mirrored: null, // the start of the text the mirror holds (null: nothing, as no caret shows)
    mirrorSplices: [], // what the text went through since the mirror last followed (null: not known)
    checkTimer: null,
    // Whether shown may hold a surrogate (an emoji): until it does, a UTF-16 index is a code point index
    // and the page converts nothing. Set as text comes in; cleared only by a whole read of the text.
    astral: false,
  };
  return card;
}

// A splice the user made in a note's body (in the textarea's UTF-16 units, on prior): sent as ops in
// code points, as the store counts, and kept as it is for the mirror of carets.
// Remote patches not on screen yet (ui.remote) are in value() but not in the textarea the splice was read
// from: the ops move past them (and they past the ops, to be shown on the text with the splice in it).
function commitSplice(ui, card, splice, prior, astral) {
  let ops = [];
  const { index, remove, text } = cpSplice(prior, splice, astral);
  if (remove > 0) ops.push({ op: "delete", path: card.path("body"), index, count: remove });
  if (text) ops.push({ op: "insert", path: card.path("body"), index, text });
  if (!ops.length) return;
  if (ui.remote !== null && ui.remote.length) [ops, ui.remote] = transform(ops, ui.remote);
  card.mirrorSplices.push(splice);
  ui.typing = true;
  try {
    ui.doc.edit(ops);
  } finally {
    ui.typing = false;
  }
}

// After a pause in typing: if the textarea holds other than what the page followed (an input event
// whose splice was misread), send what turns one into the other, as reading each event whole would.
function reconcile(ui, card) {
  if (!card.root.isConnected || card.body.readOnly) return;
  const actual = card.body.value;
  if (actual === card.shown) return;
  console.warn("crdtstore demo: the note's text drifted from the edits sent; sending the difference");
  const prior = card.shown, astral = card.astral;
  const splice = textSplice(prior, actual, card.body.selectionEnd);
  card.shown = actual;
  card.astral = hasSurrogate(actual);
  commitSplice(ui, card, splice, prior, astral);
}

function updateCard(ui, card, note, remotePatches, inFrame) {
  const { doc } = ui;
  const title = typeof note.title === "string" ? note.title : note.title == null ? "" : JSON.stringify(note.title);
  if (document.activeElement !== card.title && card.title.value !== title) card.title.value = title;

  // Siblings: concurrent titles, until one is picked or the title is retyped.
  const sibs = ui.siblings[card.root.dataset.id] || [];
  card.siblings.hidden = sibs.length < 2;
  if (sibs.length >= 2) {
    const key = JSON.stringify(sibs);
    if (card.siblings.dataset.key !== key) {
      card.siblings.dataset.key = key;
      card.siblings.replaceChildren(el("span", { textContent: "Concurrent titles: " }));
      for (const s of sibs) {
        const pick = el("button", { textContent: String(s), disabled: ui.role === "read" });
        pick.dataset.testid = "pick-sibling";
        pick.onclick = () => {
          ui.titleEdited = true;
          doc.edit([{ op: "set", path: card.path("title"), value: s }]);
        };
        card.siblings.append(pick);
      }
    }
  }

  // Body: a remote change moves the caret past the remote patches, as the rebase moved the pending ops.
  const text = typeof note.body === "string" ? note.body : "";
  // Compared with what we last put or read there: reading a textarea's value builds a string of the
  // whole text, which in a 100 KB note is most of a keystroke's budget.
  if (card.shown !== text) {
    let start = card.body.selectionStart, end = card.body.selectionEnd;
    const focused = document.activeElement === card.body;
    const astral = hasSurrogate(text), either = astral || card.astral;
    if (remotePatches) {
      // The selection in code points, moved as the store moves text, and back into the new text's units.
      const move = (unit) => toUnits(text, moveIndex(card.path("body"), toCp(card.shown, unit, card.astral), remotePatches), astral);
      start = move(start);
      end = move(end);
    } else if (astral || card.astral) {
      // A whole new text (a snapshot): the selection keeps its code point indexes.
      start = toUnits(text, toCp(card.shown, start, card.astral), astral);
      end = toUnits(text, toCp(card.shown, end, card.astral), astral);
    }
    // The remote patches as splices lead the mirror from what the textarea held to the new text.
    const splices = remotePatches ? patchSplices(card.path("body"), remotePatches, card.shown, either) : null;
    // (null: not known, the mirror compares if it needs to)
    card.mirrorSplices.push(...(splices && spliceText(card.shown, splices) === text ? splices : [null]));
    const scroll = card.body.scrollTop;
    card.body.value = text;
    card.shown = text;
    card.astral = astral;
    if (focused) card.body.setSelectionRange(Math.min(start, text.length), Math.min(end, text.length));
    card.body.scrollTop = scroll;
    if (remotePatches) {
      const length = text.length, note = card.root.dataset.id;
      const shown = () => stats.remote.push({ t: performance.timeOrigin + performance.now(), note, length });
      if (inFrame) shown();
      else requestAnimationFrame(shown);
    }
  }
  renderCarets(ui, card, text);

  // Checklist.
  const { order, items } = checklistOf({ notes: { [card.root.dataset.id]: note } }, card.root.dataset.id);
  const rows = [];
  order.forEach((item, index) => {
    const entry = items[item];
    if (!entry) return;
    const box = el("input", { type: "checkbox", checked: !!entry.done, disabled: ui.role === "read" });
    box.onchange = () => doc.edit([{ op: box.checked ? "enable" : "disable", path: card.path("checklist", "items", item, "done") }]);
    const remove = el("button", { textContent: "×", disabled: ui.role === "read" });
    remove.onclick = () => {
      const at = checklistOf(doc.value(), card.root.dataset.id).order.indexOf(item);
      const ops = [{ op: "delete", path: card.path("checklist", "items", item) }];
      if (at >= 0) ops.unshift({ op: "delete", path: card.path("checklist", "order"), index: at, count: 1 });
      doc.edit(ops);
    };
    const li = el("li", { className: entry.done ? "done" : "" }, box, el("span", { textContent: entry.text ?? "" }), remove);
    li.dataset.item = item;
    li.dataset.index = index;
    rows.push(li);
  });
  const rowsKey = JSON.stringify([order, items]);
  if (card.list.dataset.key !== rowsKey) {
    card.list.dataset.key = rowsKey;
    card.list.replaceChildren(...rows);
  }
  const votes = typeof note.votes === "number" || typeof note.votes === "string" ? note.votes : 0;
  setText(card.votes, `▲ ${votes}`);
  const tagList = Array.isArray(note.tags) ? [...note.tags].map(String).sort() : [];
  const tagKey = JSON.stringify(tagList);
  if (card.tags.dataset.key !== tagKey) {
    card.tags.dataset.key = tagKey;
    card.tags.replaceChildren(...tagList.map((t) => {
      const x = el("button", { textContent: "×", disabled: ui.role === "read" });
      x.onclick = () => doc.edit([{ op: "remove", path: card.path("tags"), value: t }]);
      return el("span", { className: "tag" }, t, x);
    }));
  }
}

function checklistOf(value, id) {
  const note = (value.notes || {})[id] || {};
  const checklist = note.checklist && typeof note.checklist === "object" ? note.checklist : {};
  return {
    order: Array.isArray(checklist.order) ? checklist.order : [],
    items: checklist.items && typeof checklist.items === "object" ? checklist.items : {},
  };
}

// Other people's carets in this note. The mirror under the textarea lays the text out in the same box,
// and a caret goes where a range at its index lies in the mirror. The mirror's text follows the note by
// splices (a keystroke's, a remote patch's) rather than being rebuilt, and only up to the line of the
// furthest caret: in a 100 KB note, laying out a full copy again costs as much as the keystroke.
function renderCarets(ui, card, text) {
  const id = card.root.dataset.id;
  const here = [];
  for (const [client, caret] of ui.doc.carets) {
    const who = ui.doc.presence.get(client);
    // Presence comes from other people's pages: an index that is no index draws no caret.
    if (!who || caret.path[1] !== id || caret.path[2] !== "body" || !Number.isInteger(caret.index)) continue;
    // The caret counts code points; the mirror's Text node counts UTF-16 units.
    const unit = Math.min(toUnits(text, Math.max(0, caret.index), card.astral), text.length);
    here.push({ index: unit, cp: unit === text.length ? toCp(text, unit, card.astral) : Math.max(0, caret.index), who });
  }
  if (!here.length) {
    // Nobody to draw: the mirror lets its text go (it would cost a layout each keystroke).
    if (card.mirrored !== null) card.mirrorText.data = "";
    card.mirrored = null;
    card.mirrorSplices = [];
    if (card.caretsInner.firstChild) card.caretsInner.replaceChildren();
    card.mirror.dataset.key = "";
    return;
  }
  // The mirror holds the text up to the end of the line of the furthest caret: nothing after that line
  // moves a caret (a newline ends the line), so typing further down lays the mirror out not at all.
  const furthest = Math.max(...here.map((h) => h.index));
  const lineEnd = text.indexOf("\n", furthest);
  const cut = lineEnd < 0 ? text.length : lineEnd;
  let moved = false;
  if (card.mirrored === null) {
    // A trailing newline, so that a caret after the text's own last newline has a line to sit on.
    card.mirrorText.data = text.slice(0, cut) + "\n";
    card.mirrored = text.slice(0, cut);
    moved = true;
  } else {
    const mirrored = card.mirrored;
    const splices = prefixSplices(mirrored, card.mirrorSplices, text, cut) || [diffSplice(mirrored, text.slice(0, cut))];
    for (const { index, remove, text: add } of splices) {
      if (remove || add) card.mirrorText.replaceData(index, remove, add);
      moved ||= remove > 0 || add.length > 0;
    }
    if (moved) card.mirrored = text.slice(0, cut);
  }
  card.mirrorSplices = [];
  const width = card.mirror.clientWidth;
  const key = JSON.stringify(here.map((h) => [h.index, h.who.name, h.who.region, h.who.color])) + `@${width}`;
  if (!moved && card.mirror.dataset.key === key) return;
  card.mirror.dataset.key = key;
  card.mirror.scrollTop = card.body.scrollTop;
  const box = card.mirror.getBoundingClientRect();
  const range = document.createRange();
  const rectAt = (index) => {
    // A collapsed range on an empty line has no box: then the box of the character after the caret
    // (the mirror's text always has one: its trailing newline) starts where the caret is.
    range.setStart(card.mirrorText, index);
    range.collapse(true);
    const rect = range.getClientRects()[0];
    if (rect) return rect;
    range.setEnd(card.mirrorText, index + 1);
    return range.getClientRects()[0] || range.getBoundingClientRect();
  };
  const marks = here.map(({ index, cp, who }) => {
    const rect = rectAt(index);
    const mark = el("span", { className: "caret" });
    mark.dataset.name = `${who.name} (${who.region})`;
    mark.dataset.testid = "remote-caret";
    mark.dataset.index = String(cp);
    mark.style.setProperty("--c", who.color || "#e33");
    // In the text's own coordinates: the layer scrolls with the textarea.
    mark.style.left = `${rect.left - box.left}px`;
    mark.style.top = `${rect.top - box.top + card.mirror.scrollTop}px`;
    mark.style.height = `${Math.max(rect.height, 12)}px`;
    return mark;
  });
  card.caretsInner.style.transform = `translateY(${-card.body.scrollTop}px)`;
  card.caretsInner.replaceChildren(...marks);
}

let presenceTimer = null;
function sendPresence(ui, noteId, body) {
  if (noteId) ui.focusNote = { noteId, body };
  if (presenceTimer) return;
  presenceTimer = setTimeout(() => {
    presenceTimer = null;
    const focus = ui.focusNote;
    const state = { name: ui.name, color: ui.color, region: ui.doc.region };
    const card = focus && ui.cards.get(focus.noteId);
    if (card) {
      // Other pages (and the store) count code points: an emoji before the caret is one, not two.
      const index = toCp(card.shown, focus.body.selectionStart, card.astral);
      state.caret = { path: ["notes", focus.noteId, "body"], index };
    }
    ui.doc.setPresence(state);
  }, 80); // at most ~12 a second: the server allows 20
}

let siblingsTimer = null;
function fetchSiblingsSoon(ui) {
  clearTimeout(siblingsTimer);
  siblingsTimer = setTimeout(async () => {
    try {
      const url = `/demo/siblings?region=${encodeURIComponent(ui.doc.region)}&doc=${encodeURIComponent(ui.board)}`;
      const answer = await fetch(url);
      if (!answer.ok) return;
      const body = await answer.json();
      const notes = (body.siblings && body.siblings.notes) || {};
      ui.siblings = {};
      for (const [id, note] of Object.entries(notes)) {
        if (note && Array.isArray(note.title)) ui.siblings[id] = note.title;
      }
      render(ui);
    } catch (err) {
      // The region is down: the failover will bring the next answer.
    }
  }, 150);
}

// The recent batches, one row each, keyed by batch id: a row's cells change in place, so a keystroke
// adds one row rather than rebuilding the table (whose layout would share the keystroke's frame).
const editRows = new Map();
function renderEdits(ui) {
  const regions = Object.keys(ui.doc.regions).length;
  const table = $("#edits");
  if (!table.firstChild) table.append(el("tr", {}, ...["batch", "w", "outcome", "ack"].map((h) => el("th", { textContent: h }))));
  const shown = ui.doc.log.slice(0, 12);
  const keep = new Set(shown.map((e) => e.id));
  for (const [id, tr] of editRows) {
    if (!keep.has(id)) {
      tr.remove();
      editRows.delete(id);
    }
  }
  shown.forEach((e, n) => {
    let tr = editRows.get(e.id);
    if (!tr) {
      tr = el("tr", {}, el("td", { className: "mono" }), el("td"), el("td"), el("td"));
      tr.dataset.testid = "edit-row";
      editRows.set(e.id, tr);
    }
    const [batch, w, outcome, ack] = tr.children;
    setText(batch, String(e.id || "").slice(-4));
    setText(w, e.w || "");
    const text = editOutcome(e, regions);
    setText(outcome, text);
    outcome.className = e.status && /^\d/.test(e.status) ? "err" : "";
    setText(ack, e.ms !== undefined ? `${e.ms} ms` : "");
    if (table.children[n + 1] !== tr) table.insertBefore(tr, table.children[n + 1] || null);
  });
}

main();
