// Text positions: the store (and crdtstore/rebase.py) counts code points, while a JS string, a
// textarea's selection and a DOM Text node count UTF-16 units, in which a character outside the Basic
// Multilingual Plane (an emoji) is two. The page's model (ops, patches, pending edits, carets) counts
// code points; only where it meets the textarea does it convert, with these. Each conversion takes a
// flag saying whether the text may hold a surrogate at all (the page tracks it per note as edits come):
// without one the two counts agree, and the conversion costs nothing in a long note. Pure.

const SURROGATE = /[\uD800-\uDFFF]/;
const PAIRS = /[\uD800-\uDBFF][\uDC00-\uDFFF]/g;

const isHigh = (code) => code >= 0xd800 && code <= 0xdbff;
const isLow = (code) => code >= 0xdc00 && code <= 0xdfff;

// Whether text holds any surrogate (else every count agrees).
export const hasSurrogate = (text) => SURROGATE.test(text);

// The text's length in code points (a lone surrogate counts one, as Python's len does).
export function cpLength(text, astral = true) {
  if (!astral || !SURROGATE.test(text)) return text.length;
  const pairs = text.match(PAIRS);
  return text.length - (pairs ? pairs.length : 0);
}

// The code point index of UTF-16 index unit in text (a unit inside a pair counts as after it).
export function toCp(text, unit, astral = true) {
  if (!astral) return unit;
  return cpLength(text.slice(0, unit));
}

// The UTF-16 index of code point index cp in text; past the end, the end plus what is left over (so a
// bounds check in units refuses what one in code points would).
export function toUnits(text, cp, astral = true) {
  if (!astral || cp <= 0) return cp;
  // Where the first cp units hold no surrogate, they are cp code points.
  if (!SURROGATE.test(cp >= text.length ? text : text.slice(0, cp))) return cp;
  // Each round reads a disjoint stretch as long as the code points still wanted (each unit is at most
  // one): O(cp) in native regex scans, not a loop over every unit in JS.
  let unit = 0, n = 0;
  while (n < cp && unit < text.length) {
    let end = Math.min(unit + (cp - n), text.length);
    if (end < text.length && isHigh(text.charCodeAt(end - 1)) && isLow(text.charCodeAt(end))) end += 1;
    n += cpLength(text.slice(unit, end));
    unit = end;
  }
  return unit + (cp - n);
}

// A UTF-16 index moved off the middle of a pair (to its start), so that no edit splits a character.
export function alignStart(text, unit) {
  return unit > 0 && isHigh(text.charCodeAt(unit - 1)) && isLow(text.charCodeAt(unit)) ? unit - 1 : unit;
}

// A splice {index, remove, text} of before in UTF-16 units as the same splice in code points.
export function cpSplice(before, splice, astral = true) {
  if (!astral) return splice;
  return {
    index: toCp(before, splice.index),
    remove: cpLength(before.slice(splice.index, splice.index + splice.remove)),
    text: splice.text,
  };
}
