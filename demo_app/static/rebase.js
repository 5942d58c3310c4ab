// The thin client's rebase, as the README's "Live editing" section specifies it (the same rules as
// crdtstore/rebase.py): the confirmed value, at most one batch in flight, the ops typed since, queued.
// Pure: no DOM, no socket, no clock, so the Python property tests of rebase.py vouch for the rules.

import { textSplice } from "./splice.js";
import { cpLength, cpSplice, toUnits } from "./units.js";

// Text counts code points, as the store does (a JS string's length counts UTF-16 units).
const contentLength = (op) => ("text" in op ? cpLength(op.text) : (op.values || []).length);

// ["ins", i, n] / ["del", i, k] for an index op or patch; null for anything else.
function shape(op) {
  if (op.insert && typeof op.insert === "object") return ["ins", op.insert.index, contentLength(op.insert)];
  if (op.delete && typeof op.delete === "object") return ["del", op.delete.index, op.delete.count];
  if (op.op === "insert" && "index" in op) return ["ins", op.index, contentLength(op)];
  if (op.op === "delete" && "index" in op) return ["del", op.index, op.count ?? 1];
  return null;
}

function moved(op, index, count) {
  if (op.insert && typeof op.insert === "object") return { ...op, insert: { ...op.insert, index } };
  if (op.delete && typeof op.delete === "object") return { ...op, delete: { index, count } };
  const out = { ...op, index };
  if (count !== undefined) out.count = count;
  return out;
}

const collapse = (x, i, k) => (x <= i ? x : x < i + k ? i : x - k);
const samePath = (a, b) => a.length === b.length && a.every((p, n) => p === b[n]);

// a (local) moved past b (remote), and b past a; both start from the same value.
function xform(a, b) {
  const sa = shape(a), sb = shape(b);
  if (!sa || !sb || !samePath(a.path, b.path)) return [[a], [b]];
  const [ka, j, m] = sa, [kb, i, n] = sb;
  if (ka === "ins" && kb === "ins") {
    if (i <= j) return [[moved(a, j + n)], [b]]; // the remote insert goes first
    return [[a], [moved(b, i + m)]];
  }
  if (ka === "ins" && kb === "del") {
    if (j <= i) return [[a], [moved(b, i + m, n)]];
    if (j >= i + n) return [[moved(a, j - n)], [b]];
    // Inserted inside the deleted range: the insert survives at the cut, the delete goes around it.
    return [[moved(a, i)], [moved(b, i, j - i), moved(b, i + m, i + n - j)]];
  }
  if (ka === "del" && kb === "ins") {
    const [b2, a2] = xform(b, a);
    return [a2, b2];
  }
  const start = collapse(j, i, n), end = collapse(j + m, i, n);
  const oStart = collapse(i, j, m), oEnd = collapse(i + n, j, m);
  return [end > start ? [moved(a, start, end - start)] : [], oEnd > oStart ? [moved(b, oStart, oEnd - oStart)] : []];
}

// local ops moved past remote patches, and remote moved past local: [local', remote'].
export function transform(local, remote) {
  if (!local.length || !remote.length) return [local, remote];
  if (local.length === 1 && remote.length === 1) return xform(local[0], remote[0]);
  if (local.length > 1) {
    const [first, restRemote] = transform(local.slice(0, 1), remote);
    const [rest, finalRemote] = transform(local.slice(1), restRemote);
    return [first.concat(rest), finalRemote];
  }
  let [m, firstRemote] = transform(local, remote.slice(0, 1));
  let restRemote;
  [m, restRemote] = transform(m, remote.slice(1));
  return [m, firstRemote.concat(restRemote)];
}

// A caret at index of path after the remote patches (a remote insert right at the caret goes after it).
export function moveIndex(path, index, remote) {
  for (const patch of remote) {
    const s = shape(patch);
    if (!s || !samePath(patch.path, path)) continue;
    const [kind, i, n] = s;
    if (kind === "ins" && i < index) index += n;
    else if (kind === "del") index = collapse(index, i, n);
  }
  return index;
}

function parentOf(value, path, create) {
  let parent = value;
  for (const name of path.slice(0, -1)) {
    if (parent === null || typeof parent !== "object" || Array.isArray(parent)) return null;
    if (!(name in parent)) {
      if (!create) return null;
      parent[name] = {};
    }
    parent = parent[name];
  }
  return parent !== null && typeof parent === "object" && !Array.isArray(parent) ? parent : null;
}

// Patches applied in order to a plain value, in place; throws when one does not fit (then resync).
export function applyPatches(value, patches) {
  for (const patch of patches) {
    const parent = parentOf(value, patch.path, false);
    if (!parent) throw new Error(`no map at ${patch.path}`);
    const name = patch.path[patch.path.length - 1];
    if ("value" in patch) parent[name] = structuredClone(patch.value);
    else if ("remove" in patch) delete parent[name];
    else if (patch.insert) {
      const cur = parent[name], { index: i } = patch.insert;
      const u = typeof cur === "string" ? toUnits(cur, i) : i;
      if (typeof cur === "string" && "text" in patch.insert && i >= 0 && u <= cur.length) {
        parent[name] = cur.slice(0, u) + patch.insert.text + cur.slice(u);
      } else if (Array.isArray(cur) && "values" in patch.insert && i >= 0 && i <= cur.length) {
        cur.splice(i, 0, ...structuredClone(patch.insert.values));
      } else throw new Error(`insert does not fit at ${patch.path}`);
    } else if (patch.delete) {
      const cur = parent[name], { index: i, count: n } = patch.delete;
      const isText = typeof cur === "string";
      const u = isText ? toUnits(cur, i) : i, end = isText ? toUnits(cur, i + n) : i + n;
      if ((!isText && !Array.isArray(cur)) || i < 0 || n < 0 || end > cur.length) {
        throw new Error(`delete does not fit at ${patch.path}`);
      }
      if (isText) parent[name] = cur.slice(0, u) + cur.slice(end);
      else cur.splice(i, n);
    } else throw new Error("unknown patch");
  }
  return value;
}

// Ops (the POST format) applied to a plain value in place, as a screen shows them; indexes clamped.
export function applyOps(value, ops) {
  for (const op of ops) {
    const path = op.path || [];
    if (!path.length) continue;
    const parent = parentOf(value, path, true);
    if (!parent) continue;
    const name = path[path.length - 1], cur = parent[name];
    const clamp = (i, len) => Math.max(0, Math.min(i, len));
    switch (op.op) {
      case "set": parent[name] = structuredClone(op.value); break;
      case "increment": parent[name] = (typeof cur === "number" ? cur : 0) + (op.by ?? 1); break;
      case "enable": case "disable": parent[name] = op.op === "enable"; break;
      case "add": case "remove": {
        const items = Array.isArray(cur) ? [...cur] : [];
        const at = items.findIndex((x) => JSON.stringify(x) === JSON.stringify(op.value));
        if (op.op === "add" && at < 0) items.push(op.value);
        if (op.op === "remove" && at >= 0) items.splice(at, 1);
        parent[name] = items;
        break;
      }
      case "insert": {
        const add = "text" in op ? op.text : op.values;
        const seq = cur ?? (typeof add === "string" ? "" : []);
        if (typeof seq === "string" && typeof add === "string") {
          const i = clamp(toUnits(seq, op.index ?? 0), seq.length);
          parent[name] = seq.slice(0, i) + add + seq.slice(i);
        } else if (Array.isArray(seq) && Array.isArray(add)) {
          const i = clamp(op.index ?? 0, seq.length);
          parent[name] = [...seq.slice(0, i), ...structuredClone(add), ...seq.slice(i)];
        }
        break;
      }
      case "delete":
        if ("index" in op) {
          if (typeof cur === "string" || Array.isArray(cur)) {
            if (typeof cur === "string") {
              const i = clamp(toUnits(cur, op.index), cur.length);
              parent[name] = cur.slice(0, i) + cur.slice(toUnits(cur, (op.index < 0 ? 0 : op.index) + (op.count ?? 1)));
            } else {
              const i = clamp(op.index, cur.length), end = i + (op.count ?? 1);
              parent[name] = [...cur.slice(0, i), ...cur.slice(end)];
            }
          }
        } else delete parent[name];
        break;
      default: break;
    }
  }
  return value;
}

// The text ops that turn before into after, for one input event: the edit ends where the caret now is
// (so typing "a" into "aa" inserts at the caret, not at the end a plain diff would pick). before, after
// and caret are the textarea's (UTF-16 units); the ops count code points, as the store does.
export function textOps(path, before, after, caret) {
  const { index, remove, text } = cpSplice(before, textSplice(before, after, caret));
  const ops = [];
  if (remove > 0) ops.push({ op: "delete", path, index, count: remove });
  if (text) ops.push({ op: "insert", path, index, text });
  return ops;
}
