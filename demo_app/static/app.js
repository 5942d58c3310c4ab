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
import { moveIndex, textOps } from "./rebase.js";
import { startPanel } from "./panel.js";

const params = new URLSearchParams(location.search);
const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
};
const COLORS = ["#e8590c", "#2b8a3e", "#1971c2", "#ae3ec9", "#c2255c", "#0c8599"];
const newId = (p) => `${p}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;

// Measurements the browser tests read (performance.now() based; see tests/demo).
const stats = { local: [], keydowns: [], remote: [] };

async function main() {
  const config = await (await fetch("/demo/config.json")).json();
  const regionNames = Object.keys(config.regions);
  const region = regionNames.includes(params.get("region")) ? params.get("region") : regionNames[0];
  const role = params.get("role") === "read" ? "read" : "readwrite";
  const board = params.get("board") || "board-demo";
  const name = params.get("name") || localStorage.getItem("crdtstore-name") || `user-${Math.random().toString(36).slice(2, 5)}`;
  const color = COLORS[[...name].reduce((a, c) => a + c.charCodeAt(0), 0) % COLORS.length];

  const doc = new LiveDoc({ docId: board, regions: config.regions, region, token: config.tokens[role] });
  const ui = { doc, board, name, color, role, siblings: {}, cards: new Map(), focusNote: null };
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
    requestAnimationFrame(() => { renderQueued = false; render(ui); });
  };
  doc.addEventListener("change", (e) => {
    // A remote change shows at once, with the carets moved past its patches; our own batch coming back
    // changes nothing on screen in the common case, so it waits for the next frame with the rest.
    if (e.detail.origin === "local") renderSoon();
    else render(ui, e.detail.patches);
    // Siblings are not in the live value (it shows one of them): ask the region after a remote change
    // (a concurrent title can arrive without changing the value shown) and after our own title edits.
    if (e.detail.origin !== "local" || ui.titleEdited) {
      ui.titleEdited = false;
      fetchSiblingsSoon(ui);
    }
  });
  doc.addEventListener("local", renderSoon);
  doc.addEventListener("presence", renderSoon);
  doc.addEventListener("status", () => {
    renderSoon();
    if (doc.connected) sendPresence(ui); // after a failover, others see the region this window is on now
  });
  doc.addEventListener("ack", renderSoon);
  doc.addEventListener("log", () => renderEdits(ui));
  doc.connect();
  setInterval(() => sendPresence(ui), 10000); // presence expires after 30 s without a refresh
  startPanel({ doc, board, regions: regionNames });
  render(ui);
}

// Rendering: cards are keyed by note id and updated in place, so focus, caret and scroll survive.

function render(ui, remotePatches = null) {
  const { doc } = ui;
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
    updateCard(ui, card, notes[id], remotePatches);
  });
  renderHeader(ui);
}

function renderHeader(ui) {
  const { doc } = ui;
  $("#region").textContent = doc.region + (ui.role === "read" ? " · read-only" : "");
  $("#region-select").value = doc.region;
  const unsynced = doc.unsynced();
  $("#unsynced").textContent = `${unsynced} unsynced`;
  $("#unsynced").classList.toggle("dirty", unsynced > 0);
  const status = $("#status");
  status.textContent = doc.fatal ? doc.fatal : doc.offline ? "offline (edits queue here)" : doc.connected ? "live" : "connecting…";
  status.classList.toggle("down", !doc.connected);
  const people = [...doc.presence.values()].filter((p) => p && p.name).map((p) => `${p.name} (${p.region})`);
  $("#people").textContent = people.length ? `here: ${people.join(", ")}` : "";
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
  const mirror = el("div", { className: "mirror" });
  let shown = "";
  body.addEventListener("keydown", (e) => {
    stats.keydowns.push({ t: performance.timeOrigin + e.timeStamp, key: e.key });
    ui.pendingKey = e.timeStamp;
  });
  body.addEventListener("input", () => {
    const before = shown, after = body.value;
    const ops = textOps(path("body"), before, after, body.selectionEnd);
    card.shown = after;
    if (ops.length) doc.edit(ops);
    const t0 = ui.pendingKey;
    ui.pendingKey = undefined;
    if (t0 !== undefined) requestAnimationFrame(() => stats.local.push(performance.now() - t0));
    sendPresence(ui, id, body);
  });
  for (const type of ["keyup", "mouseup", "focus"]) body.addEventListener(type, () => sendPresence(ui, id, body));
  body.addEventListener("scroll", () => { mirror.scrollTop = body.scrollTop; });

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
    el("div", { className: "body-wrap" }, mirror, body),
    list, addItem,
    el("div", { className: "meta" }, votes, tags, addTag),
  );
  root.dataset.id = id;
  root.dataset.testid = "note";
  const card = { root, title, siblings, body, mirror, list, votes, tags, path, get shown() { return shown; }, set shown(v) { shown = v; } };
  return card;
}

function updateCard(ui, card, note, remotePatches) {
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
    if (remotePatches) {
      start = moveIndex(card.path("body"), start, remotePatches);
      end = moveIndex(card.path("body"), end, remotePatches);
    }
    const scroll = card.body.scrollTop;
    card.body.value = text;
    card.shown = text;
    if (focused) card.body.setSelectionRange(Math.min(start, text.length), Math.min(end, text.length));
    card.body.scrollTop = scroll;
    if (remotePatches) {
      const length = text.length, note = card.root.dataset.id;
      requestAnimationFrame(() => stats.remote.push({ t: performance.timeOrigin + performance.now(), note, length }));
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
  card.votes.textContent = `▲ ${votes}`;
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

// Other people's carets in this note, drawn in a mirror of the textarea under it.
function renderCarets(ui, card, text) {
  const id = card.root.dataset.id;
  const here = [];
  for (const [client, caret] of ui.doc.carets) {
    const who = ui.doc.presence.get(client);
    if (who && caret.path[1] === id && caret.path[2] === "body") here.push({ index: Math.min(caret.index, text.length), who });
  }
  const key = JSON.stringify(here.map((h) => [h.index, h.who.name])) + (here.length ? text.length : "");
  if (card.mirror.dataset.key === key) return;
  card.mirror.dataset.key = key;
  if (!here.length) {
    card.mirror.replaceChildren();
    return;
  }
  here.sort((a, b) => a.index - b.index);
  const parts = [];
  let at = 0;
  for (const { index, who } of here) {
    parts.push(text.slice(at, index));
    const mark = el("span", { className: "caret" });
    mark.dataset.name = `${who.name} (${who.region})`;
    mark.dataset.testid = "remote-caret";
    mark.style.setProperty("--c", who.color || "#e33");
    parts.push(mark);
    at = index;
  }
  parts.push(text.slice(at) + "\n");
  card.mirror.replaceChildren(...parts);
  card.mirror.scrollTop = card.body.scrollTop;
}

let presenceTimer = null;
function sendPresence(ui, noteId, body) {
  if (noteId) ui.focusNote = { noteId, body };
  if (presenceTimer) return;
  presenceTimer = setTimeout(() => {
    presenceTimer = null;
    const focus = ui.focusNote;
    const state = { name: ui.name, color: ui.color, region: ui.doc.region };
    if (focus && ui.cards.has(focus.noteId)) state.caret = { path: ["notes", focus.noteId, "body"], index: focus.body.selectionStart };
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

function renderEdits(ui) {
  const rows = ui.doc.log.slice(0, 12).map((e) => {
    // The ack frame carries no count: an ack at w means at least the level's quorum of the regions held it.
    const regions = Object.keys(ui.doc.regions).length;
    const needed = { one: 1, local_quorum: 1, quorum: Math.floor(regions / 2) + 1, all: regions }[e.w] || 1;
    const detail = e.detail && e.detail.needed !== undefined
      ? ` (reached ${e.detail.reached} of ${e.detail.needed})`
      : e.status && e.status.startsWith("ack") ? ` by ≥${needed}/${regions}` : "";
    const tr = el("tr", {},
      el("td", { className: "mono", textContent: String(e.id || "").slice(-4) }),
      el("td", { textContent: e.w || "" }),
      el("td", { className: e.status && /^\d/.test(e.status) ? "err" : "", textContent: `${e.status}${detail}` }),
      el("td", { textContent: e.ms !== undefined ? `${e.ms} ms` : "" }),
    );
    tr.dataset.testid = "edit-row";
    return tr;
  });
  $("#edits").replaceChildren(el("tr", {}, ...["batch", "w", "outcome", "ack"].map((h) => el("th", { textContent: h }))), ...rows);
}

main();
