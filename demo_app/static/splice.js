// Edits of one text as splices {index, remove, text}, so the page can follow a keystroke or a remote
// patch in O(edit) instead of comparing whole texts: in a 100 KB note, reading a textarea's value or
// scanning it for the change costs more than the rest of a keystroke. Pure: no DOM, no clock.
// Splices count UTF-16 units, as the textarea and the mirror's Text node do, and never cut a surrogate
// pair; the page turns them into code points (units.js) where they become ops.
import { alignStart, toUnits } from "./units.js";

// A common prefix ending at start and a common suffix of end units, both moved off the middle of a pair:
// an emoji changed into another shares its first unit with it, not its character.
function alignEnds(before, after, start, end) {
  start = Math.min(alignStart(before, start), alignStart(after, start));
  const low = (text) => end > 0 && alignStart(text, text.length - end) !== text.length - end;
  if (low(before) || low(after)) end -= 1;
  return [start, end];
}

// The splices applied in order (each reads the text the previous ones left).
export function spliceText(text, splices) {
  for (const { index, remove, text: add } of splices) text = text.slice(0, index) + add + text.slice(index + remove);
  return text;
}

// One splice that turns before into after, around their common ends: O(length), the fallback.
export function diffSplice(before, after) {
  const most = Math.min(before.length, after.length);
  let start = 0;
  while (start < most && before.charCodeAt(start) === after.charCodeAt(start)) start++;
  let end = 0;
  while (end < most - start && before.charCodeAt(before.length - 1 - end) === after.charCodeAt(after.length - 1 - end)) end++;
  [start, end] = alignEnds(before, after, start, end);
  return { index: start, remove: before.length - start - end, text: after.slice(start, after.length - end) };
}

// The splice that turns before into after for one input event, ending at the caret where it can
// (typing "a" into "aa" inserts at the caret, not at the end a plain comparison would pick).
export function textSplice(before, after, caret) {
  let end = 0;
  const maxEnd = Math.min(before.length, after.length, after.length - caret >= 0 ? after.length - caret : 0);
  while (end < maxEnd && before.charCodeAt(before.length - 1 - end) === after.charCodeAt(after.length - 1 - end)) end++;
  let start = 0;
  const maxStart = Math.min(before.length, after.length) - end;
  while (start < maxStart && before.charCodeAt(start) === after.charCodeAt(start)) start++;
  [start, end] = alignEnds(before, after, start, end);
  return { index: start, remove: before.length - end - start, text: after.slice(start, after.length - end) };
}

// The splice one input event made, from the selection before it (beforeinput's selectionStart/End),
// its inputType and data, and the collapsed caret after it; null where these do not tell (a forward
// delete of an unknown count, an undo, a composition, a caret not where the edit says): then the
// caller compares texts.
export function inputSplice(before, inputType, data, caret) {
  if (!before || !Number.isInteger(caret)) return null;
  const { start, end } = before;
  if (!(Number.isInteger(start) && Number.isInteger(end) && 0 <= start && start <= end)) return null;
  if (inputType === "insertText" || inputType === "insertLineBreak") {
    const text = inputType === "insertLineBreak" ? "\n" : data;
    // A textarea's value normalizes line breaks to "\n": data that still holds "\r" is not what landed.
    if (typeof text !== "string" || text.includes("\r") || caret !== start + text.length) return null;
    return { index: start, remove: end - start, text };
  }
  if (typeof inputType === "string" && inputType.startsWith("delete")) {
    if (start < end) return caret === start ? { index: start, remove: end - start, text: "" } : null;
    // A collapsed caret that moved back: what lay between the two carets went.
    if (caret < start) return { index: caret, remove: start - caret, text: "" };
  }
  return null;
}

// The splices (in UTF-16 units) that patches (in code points) make to text, the text at path; null where
// a patch replaces or removes the text or something above it (then only a comparison tells). astral:
// whether the text or the patches may hold a surrogate (else the two counts agree and none is read).
export function patchSplices(path, patches, text = "", astral = true) {
  const out = [];
  const prefixOf = (p) => p.length <= path.length && p.every((name, n) => name === path[n]);
  for (const patch of patches) {
    const p = patch.path || [];
    if (!prefixOf(p)) continue;
    if (p.length !== path.length) return null;
    let splice;
    if (patch.insert && typeof patch.insert === "object" && typeof patch.insert.text === "string") {
      splice = { index: toUnits(text, patch.insert.index, astral), remove: 0, text: patch.insert.text };
    } else if (patch.delete && typeof patch.delete === "object") {
      const index = toUnits(text, patch.delete.index, astral);
      splice = { index, remove: toUnits(text, patch.delete.index + patch.delete.count, astral) - index, text: "" };
    } else return null;
    out.push(splice);
    if (astral) text = spliceText(text, [splice]);
  }
  return out;
}

// The splices that bring prefix (the start of a text, as a mirror holds it) to text.slice(0, cut),
// given the splices the whole text went through since: those at or past the prefix's end leave it as
// it was. null where one straddles that end or is not known (null), or the result is not that slice:
// then compare.
export function prefixSplices(prefix, splices, text, cut) {
  const out = [];
  let length = prefix.length;
  for (const splice of splices) {
    if (!splice) return null;
    if (splice.index >= length) continue;
    if (splice.index + splice.remove > length) return null;
    out.push(splice);
    length += splice.text.length - splice.remove;
  }
  if (cut > length) out.push({ index: length, remove: 0, text: text.slice(length, cut) });
  else if (cut < length) out.push({ index: cut, remove: length - cut, text: "" });
  return spliceText(prefix, out) === text.slice(0, cut) ? out : null;
}
