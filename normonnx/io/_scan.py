"""Scanning an inline ``.onnx`` without parsing it whole (:func:`normonnx.io.load_lazy`): the
protobuf fields of the model, its graph and each initializer are walked in the mapped file, and
large ``raw_data`` payloads become references into the file itself."""

from __future__ import annotations

import os
from collections.abc import Iterator

import onnx

from ._write import _set_external


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start of the field's tag, start of its payload) of the protobuf
    message ``buf[start:end]``, and the payload's end as the next field's tag start."""
    pos = start
    while pos < end:
        tag_at = pos
        tag, pos = _read_varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 2:
            n, pos = _read_varint(buf, pos)
            yield field, wire, tag_at, pos
            pos += n
        elif wire == 0:
            _, pos2 = _read_varint(buf, pos)
            yield field, wire, tag_at, pos
            pos = pos2
        elif wire in (1, 5):
            yield field, wire, tag_at, pos
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {tag_at}")
        if pos > end:
            raise ValueError(f"field {field} at byte {tag_at} runs past its message")


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError(f"truncated varint at byte {pos}")
        b = buf[pos]
        out |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return out, pos
        shift += 7


def _load_scanned(p: str) -> onnx.ModelProto | None:
    """:func:`load_lazy` of a large inline file (None: its graph has no large raw_data tensor)."""
    import mmap

    from .. import external

    location = os.path.basename(p)
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        buf = memoryview(mm)
        try:
            rest, graph_rest, inits = bytearray(), bytearray(), []
            ends = _ends(buf, 0, len(buf))
            for (field, _, tag_at, body), end in ends:
                if field != 7:  # ModelProto.graph
                    rest += buf[tag_at:end]
                    continue
                for (gf, _, gtag, gbody), gend in _ends(buf, body, end):
                    if gf != 5:  # GraphProto.initializer
                        graph_rest += buf[gtag:gend]
                        continue
                    t_rest, raw = bytearray(), None
                    for (tf, _, ttag, tbody), tend in _ends(buf, gbody, gend):
                        if tf == 9 and tend - tbody > external.INLINE_MAX:  # TensorProto.raw_data
                            raw = (tbody, tend - tbody)
                        else:
                            t_rest += buf[ttag:tend]
                    inits.append((bytes(t_rest), raw))
            if not any(raw for _, raw in inits):
                return None
            model = onnx.ModelProto.FromString(bytes(rest))
            model.graph.ParseFromString(bytes(graph_rest))
            for data, raw in inits:
                t = model.graph.initializer.add()
                t.ParseFromString(data)
                if raw is not None:
                    _set_external(t, location, raw[0], raw[1])
        finally:
            buf.release()
    if not model.graph.node and not model.graph.output:
        raise ValueError("no graph")
    return model


def _ends(buf: memoryview, start: int, end: int) -> list[tuple[tuple[int, int, int, int], int]]:
    """The fields of ``buf[start:end]``, each with the end of its payload."""
    fields = list(_fields(buf, start, end))
    return [(f, (fields[i + 1][2] if i + 1 < len(fields) else end)) for i, f in enumerate(fields)]
