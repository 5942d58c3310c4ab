"""Which keystrokes a Yjs update carries: the clock range it adds per client, read from its v1 encoding.

The Python drivers key every keystroke by (client id, clock): a fresh editor
that only inserts one ASCII character per transaction gives its k-th
keystroke clock k. An update received from the server then says which
keystrokes became visible, or (for the editor's own client) acknowledged,
without a side channel: it is enough to read each client section's start
clock and add up the lengths of its structs. Yjs has this as
``parseUpdateMeta``; pycrdt does not expose it, and ``pycrdt.get_state`` of a
delta update is empty (it only counts clients whose structs start at 0).

The format (Yjs ``encoding.js`` ``writeStructs``, ``Item.write``, lib0
``encoding``), for update v1::

    update   = varuint n_clients, n_clients * section, delete_set
    section  = varuint n_structs, varuint client, varuint clock, n_structs * struct
    struct   = info byte; ref = info & 31: 0 GC (varuint length), 10 Skip (varuint length),
               else an Item: [origin id if info & 0x80] [right origin id if info & 0x40]
               [if neither: parent (varuint 1 + name | varuint 0 + id), parent sub if info & 0x20]
               content by ref

Only the contents a text can hold are read (deleted, string, embed,
format, and the rest of the fixed-size ones); anything else raises
``UpdateFormatError``, so a driver counts it instead of guessing.
"""

from __future__ import annotations

__all__ = ["UpdateFormatError", "clock_ranges", "decode_state_vector"]


class UpdateFormatError(ValueError):
    """The bytes are not a Yjs v1 update this reader understands."""


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise UpdateFormatError("update ends early")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varuint(self) -> int:
        value = 0
        shift = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7
            if shift > 63:
                raise UpdateFormatError("varuint too long")

    def varbytes(self) -> bytes:
        n = self.varuint()
        end = self.pos + n
        if end > len(self.data):
            raise UpdateFormatError("update ends early")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def varstring(self) -> str:
        try:
            return self.varbytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UpdateFormatError("bad string") from exc


def _utf16_length(text: str) -> int:
    # Yjs counts text in UTF-16 code units: a character past the BMP is two.
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def _content_length(r: _Reader, ref: int) -> int:
    if ref == 1:  # ContentDeleted
        return r.varuint()
    if ref == 2:  # ContentJSON: n strings
        n = r.varuint()
        for _ in range(n):
            r.varstring()
        return n
    if ref == 3:  # ContentBinary
        r.varbytes()
        return 1
    if ref == 4:  # ContentString
        return _utf16_length(r.varstring())
    if ref == 5:  # ContentEmbed
        r.varstring()
        return 1
    if ref == 6:  # ContentFormat: key, JSON value
        r.varstring()
        r.varstring()
        return 1
    if ref == 7:  # ContentType: type ref, and a name for XmlElement (3) and XmlHook (5)
        type_ref = r.varuint()
        if type_ref in (3, 5):
            r.varstring()
        return 1
    raise UpdateFormatError(f"content ref {ref} not read here")


def clock_ranges(update: bytes) -> dict[int, tuple[int, int]]:
    """Per client in a Yjs v1 update, the clocks ``[start, end)`` its structs cover.

    Raises:
        UpdateFormatError: the bytes are not an update this reader understands.
    """
    r = _Reader(update)
    ranges: dict[int, tuple[int, int]] = {}
    for _ in range(r.varuint()):
        n_structs = r.varuint()
        client = r.varuint()
        start = clock = r.varuint()
        for _ in range(n_structs):
            info = r.byte()
            ref = info & 0x1F
            if ref in (0, 10):  # GC, Skip
                clock += r.varuint()
                continue
            if info & 0x80:
                r.varuint()
                r.varuint()
            if info & 0x40:
                r.varuint()
                r.varuint()
            if info & 0xC0 == 0:
                if r.varuint() == 1:
                    r.varstring()
                else:
                    r.varuint()
                    r.varuint()
                if info & 0x20:
                    r.varstring()
            clock += _content_length(r, ref)
        if n_structs:
            # A merged update may carry a client's clocks in more than one section.
            old = ranges.get(client)
            ranges[client] = (start, clock) if old is None else (min(old[0], start), max(old[1], clock))
    return ranges


def decode_state_vector(state: bytes) -> dict[int, int]:
    """A Yjs state vector (``Doc.get_state()``): client id to the next clock it will use."""
    r = _Reader(state)
    return {r.varuint(): r.varuint() for _ in range(r.varuint())}
