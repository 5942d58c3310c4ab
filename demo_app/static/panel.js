// The network panel: regions, links, replication lag, version vectors and Merkle roots, polled from the
// demo server (/demo/cluster, one request a second), and cut/heal buttons (the WAN admin API through it).
const POLL_MS = 1000;
const $ = (sel) => document.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
};

let token = "";

async function wan(action, body) {
  const answer = await fetch(`/demo/wan/${action}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
    body: JSON.stringify(body),
  });
  return answer.json();
}

// Replica ids start with their region's name ("us-…").
const regionOf = (replica) => String(replica).split("-")[0];

export function startPanel({ board, regions, doc }) {
  token = doc.token;
  const state = { last: null };
  $("#heal-all").onclick = () => wan("heal", {}).then(poll);

  async function poll() {
    try {
      const answer = await fetch(`/demo/cluster?doc=${encodeURIComponent(board)}`);
      if (answer.ok) state.last = await answer.json();
    } catch (err) {
      state.last = null;
    }
    draw(state.last);
  }

  function draw(cluster) {
    if (!cluster) return;
    const entries = regions.map((r) => [r, cluster.regions[r] || {}]);
    // The newest each origin has reached anywhere: a region's lag is what it misses of that.
    const newest = {};
    for (const [, s] of entries) for (const [replica, n] of Object.entries(s.vector || {})) newest[replica] = Math.max(newest[replica] || 0, n);
    const up = entries.filter(([, s]) => s.up);
    const roots = new Set(up.map(([, s]) => s.root));
    const converged = up.length === entries.length && roots.size === 1;
    const conv = $("#converged");
    conv.textContent = converged ? "Converged: every region holds the same Merkle root" : "Not converged yet";
    conv.className = converged ? "yes" : "no";

    const head = el("tr", {}, ...["region", "state", "Merkle root", "vector of this board", "lag", ""].map((h) => el("th", { textContent: h })));
    const rows = entries.map(([name, s]) => {
      const vector = s.vector || {};
      const lag = Object.entries(newest).reduce((sum, [replica, n]) => sum + n - (vector[replica] || 0), 0);
      // Cut this region off from every other: with three regions a single cut link is bridged by the third.
      const isolate = el("button", { textContent: "isolate", title: `cut ${name} off from every region` });
      isolate.dataset.testid = `isolate-${name}`;
      isolate.onclick = () => wan("isolate", { region: name }).then(poll);
      const vec = Object.keys(vector).sort().map((k) => `${regionOf(k)}:${vector[k]}`).join(" ");
      const tr = el("tr", {},
        el("td", { textContent: name }),
        el("td", { className: s.up ? "up" : "down", textContent: s.up ? "up" : "down" }),
        el("td", { className: "mono", textContent: s.root ? s.root.slice(0, 10) : "–" }),
        el("td", { className: "mono", textContent: vec || "–" }),
        el("td", { textContent: s.up ? (lag ? `${lag} op(s) behind` : "0") : "–" }),
        el("td", {}, isolate),
      );
      tr.dataset.testid = `region-${name}`;
      tr.dataset.root = s.root || "";
      tr.dataset.lag = String(lag);
      return tr;
    });
    $("#regions").replaceChildren(head, ...rows);

    const cut = new Set((cluster.cut || []).map((p) => [...p].sort().join("-")));
    const links = [];
    for (let i = 0; i < regions.length; i++) {
      for (let j = i + 1; j < regions.length; j++) {
        const a = regions[i], b = regions[j], key = [a, b].sort().join("-");
        const sa = cluster.regions[a] || {}, sb = cluster.regions[b] || {};
        const linked = (sa.peers || []).some((p) => regionOf(p) === b) || (sb.peers || []).some((p) => regionOf(p) === a);
        const isCut = cut.has(key);
        const label = isCut ? "cut" : linked ? "up" : "down";
        const button = el("button", { textContent: isCut ? "heal" : "cut" });
        button.dataset.testid = `link-${key}`;
        button.onclick = () => wan(isCut ? "heal" : "partition", { a, b }).then(poll);
        const tr = el("tr", {}, el("td", { textContent: `${a} ↔ ${b}` }), el("td", { className: label, textContent: label }), el("td", {}, button));
        tr.dataset.state = label;
        links.push(tr);
      }
    }
    $("#links").replaceChildren(...links);
  }

  poll();
  setInterval(poll, POLL_MS);
}

// An edit's outcome: a refusal with its counts; an ack with how many replicas held the batch of how
// many its level needed, where the region says; else the least the level's ack means.
export function editOutcome(e, regions) {
  const status = e.status || "";
  const detail = e.detail || {};
  if (status.startsWith("ack") && Number.isInteger(detail.reached) && Number.isInteger(detail.needed)) {
    return `${status.replace(/^ack/, "acked")} by ${detail.reached}/${detail.needed} of ${regions}`;
  }
  if (detail.needed !== undefined && !status.startsWith("ack")) return `${status} (reached ${detail.reached} of ${detail.needed})`;
  if (status.startsWith("ack")) {
    // An ack without counts: at w it means at least the level's quorum of the regions held the batch.
    const needed = { one: 1, local_quorum: 1, quorum: Math.floor(regions / 2) + 1, all: regions }[e.w] || 1;
    return `${status} by ≥${needed}/${regions}`;
  }
  return status;
}
