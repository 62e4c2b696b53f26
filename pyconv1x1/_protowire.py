"""A small reader of the protobuf wire format for the subset of onnx.proto that a model
needs: no protobuf or onnx import, so loading an .onnx file costs milliseconds rather
than the ~200 ms of `import onnx`, and every malformed byte becomes a ModelError.

Messages decode into `Message` objects whose attributes carry the onnx.proto field
names (repeated messages and strings as lists, repeated numbers as `Numbers`, bytes
fields as zero-copy memoryview slices), with `HasField` and `WhichOneof` as in the
protobuf API. Unknown fields are skipped.
"""
import struct

import numpy as np

from .errors import ModelError

MAX_DEPTH = 32  # subgraphs nest through attributes; real models use a few levels

# field kinds
VARINT, SVARINT, FLOAT, DOUBLE, BYTES, STRING, MESSAGE = range(7)


def _default(kind, repeated):
    if repeated:
        # read-only view of an empty repeated field; the parser makes lists / Numbers
        return Numbers(kind) if kind in _NUMBER_DTYPES else ()
    return {MESSAGE: None, STRING: "", BYTES: b"", FLOAT: 0.0, DOUBLE: 0.0}.get(kind, 0)


class Message:
    """Fields that were never set read as their protobuf defaults (via __getattr__,
    so building a message costs nothing per absent field)."""
    __slots__ = ("_spec", "_set", "__dict__")

    def __init__(self, spec):
        self._spec = spec
        self._set = set()

    def __getattr__(self, name):
        try:
            return self._spec[2][name]
        except (KeyError, IndexError):
            raise AttributeError(name) from None

    def HasField(self, name):  # noqa: N802 - protobuf's spelling
        return name in self._set

    def WhichOneof(self, group):  # noqa: N802
        for name in self._spec[1].get(group, ()):
            if name in self._set:
                return name
        return None


def _spec(fields, oneofs=None):
    """(fields by number, oneofs, defaults, dispatch table by one-byte key)."""
    by_num = {num: (name, kind, rep, sub) for num, name, kind, rep, sub in fields}
    return (by_num, oneofs or {},
            {name: _default(kind, rep) for num, name, kind, rep, sub in fields},
            _table(by_num))


_NUMBER_DTYPES = {VARINT: np.dtype("<i8"), SVARINT: np.dtype("<i8"),
                  FLOAT: np.dtype("<f4"), DOUBLE: np.dtype("<f8")}
_VARINT_CHUNK = 1 << 18  # bytes of packed varints decoded per numpy pass
_SMALL_RUN = 256  # packed runs up to this many bytes are decoded at once, in Python


def _bad(what):
    raise ModelError(f"not a valid ONNX model: {what}")


class Numbers:
    """A repeated number field. Packed runs stay in the model's bytes until asked for:
    `len()` counts without allocating, and `array()` decodes straight into numpy
    (floats are zero-copy views; varints are decoded vectorized), so a consumer checks
    the count against the shape before anything as large as the field exists.
    Varints read as int64 (two's complement, as protobuf stores them)."""
    __slots__ = ("kind", "_parts", "_loose", "_count")

    def __init__(self, kind):
        self.kind = kind
        self._parts = []   # numpy arrays, or memoryviews of packed varints
        self._loose = []   # unpacked elements since the last packed run
        self._count = 0

    def append(self, value):
        self._loose.append(value)
        self._count += 1

    def add_packed(self, mv):
        if len(mv) <= _SMALL_RUN:  # dims, pads, a bias: numpy costs more than it saves
            values = _decode_small(mv, self.kind)
            self._loose.extend(values)
            self._count += len(values)
            return
        self._flush()
        if self.kind in (FLOAT, DOUBLE):
            part = np.frombuffer(mv, dtype=_NUMBER_DTYPES[self.kind])
            self._count += part.size
        else:
            part = mv
            self._count += _count_varints(mv)
        self._parts.append(part)

    def _flush(self):
        if self._loose:
            self._parts.append(np.array(self._loose, dtype=_NUMBER_DTYPES[self.kind]))
            self._loose = []

    def __len__(self):
        return self._count

    def array(self, dtype=None, lo=None, hi=None, unsigned=False):
        """Every value, in order, as one numpy array (a read-only view of the model's
        bytes when it lies there as is). With `dtype`, values are converted chunk by
        chunk, each checked to be in [lo, hi] first (compared as unsigned 64-bit when
        `unsigned`): a narrow type never needs a wide copy of the whole field.
        ValueError(value) for the first value out of range."""
        self._flush()
        parts = self._parts
        if dtype is None and len(parts) == 1 and not isinstance(parts[0], memoryview):
            return parts[0]
        out = np.empty(self._count, dtype or _NUMBER_DTYPES[self.kind])
        n = 0
        for part in parts:
            for chunk in (_decode_varints(part) if isinstance(part, memoryview)
                          else (part,)):
                if unsigned:
                    chunk = chunk.view(np.uint64)
                if lo is not None:
                    bad = (chunk < lo) | (chunk > hi)
                    if bad.any():
                        raise ValueError(int(chunk[bad][0]))
                out[n:n + chunk.size] = chunk
                n += chunk.size
        return out

    def __iter__(self):
        if not self._parts:  # (dims, attribute ints: a few Python numbers already)
            return iter(list(self._loose))
        return iter(self.array().tolist())


def _decode_small(mv, kind):
    if kind == FLOAT:
        return struct.unpack(f"<{len(mv) // 4}f", mv)
    if kind == DOUBLE:
        return struct.unpack(f"<{len(mv) // 8}d", mv)
    values, pos, end = [], 0, len(mv)
    while pos < end:
        result = shift = 0
        while True:
            if pos >= end:
                _bad("truncated varint in a packed field")
            b = mv[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift >= 70:
                _bad("varint longer than 10 bytes in a packed field")
        values.append(_signed(result))
    return values


def _count_varints(mv):
    b = np.frombuffer(mv, dtype=np.uint8)
    if b.size and b[-1] >= 0x80:
        _bad("truncated varint in a packed field")
    count = 0
    for start in range(0, b.size, _VARINT_CHUNK):  # (a bool temporary per chunk only)
        count += int(np.count_nonzero(b[start:start + _VARINT_CHUNK] < 0x80))
    return count


def _decode_varints(mv):
    """Packed varints -> int64 arrays, one per chunk that ends on a varint (vectorized:
    the terminating bytes mark each value's end)."""
    b = np.frombuffer(mv, dtype=np.uint8)
    pos = 0
    while pos < b.size:
        piece = b[pos:pos + _VARINT_CHUNK]
        ends = np.flatnonzero(piece < 0x80)
        if ends.size == 0:
            _bad("varint longer than 10 bytes in a packed field")
        piece = piece[:ends[-1] + 1]
        starts = np.concatenate(([0], ends[:-1] + 1))
        lengths = ends - starts + 1
        if int(lengths.max()) > 10:
            _bad("varint longer than 10 bytes in a packed field")
        shift = (np.arange(piece.size) - np.repeat(starts, lengths)) * 7
        bits = (piece & 0x7F).astype(np.uint64) << shift.astype(np.uint64)
        yield np.bitwise_or.reduceat(bits, starts).view(np.int64)
        pos += piece.size


_WIRE = {VARINT: 0, SVARINT: 0, FLOAT: 5, DOUBLE: 1, BYTES: 2, STRING: 2, MESSAGE: 2}
_PACKABLE = (VARINT, SVARINT, FLOAT, DOUBLE)


def _entry(by_num, num, wire):
    """The field a key names: (name, kind, repeated, sub); kind None when the wire type
    is wrong for the field; None for an unknown field (skipped)."""
    field = by_num.get(num)
    if field is None:
        return None
    name, kind, repeated, _ = field
    if wire == _WIRE[kind] or (wire == 2 and repeated and kind in _PACKABLE):
        return field
    return (name, None, repeated, None)


def _table(by_num):
    """Entries for every one-byte key (fields 1-15, all wire types): the parser's
    dispatch is then one list index per field."""
    return [None] * 8 + [_entry(by_num, key >> 3, key & 7) for key in range(8, 128)]


STRING_ENTRY = _spec([(1, "key", STRING, False, None), (2, "value", STRING, False, None)])
SEGMENT = _spec([(1, "begin", VARINT, False, None), (2, "end", VARINT, False, None)])
TENSOR = _spec([
    (1, "dims", VARINT, True, None), (2, "data_type", VARINT, False, None),
    (3, "segment", MESSAGE, False, SEGMENT), (4, "float_data", FLOAT, True, None),
    (5, "int32_data", VARINT, True, None), (6, "string_data", BYTES, True, None),
    (7, "int64_data", VARINT, True, None), (8, "name", STRING, False, None),
    (9, "raw_data", BYTES, False, None), (10, "double_data", DOUBLE, True, None),
    (11, "uint64_data", VARINT, True, None), (12, "doc_string", STRING, False, None),
    (13, "external_data", MESSAGE, True, STRING_ENTRY),
    (14, "data_location", VARINT, False, None)])
SPARSE_TENSOR = _spec([(1, "values", MESSAGE, False, TENSOR),
                       (2, "indices", MESSAGE, False, TENSOR),
                       (3, "dims", VARINT, True, None)])
DIMENSION = _spec([(1, "dim_value", VARINT, False, None), (2, "dim_param", STRING, False, None),
                   (3, "denotation", STRING, False, None)],
                  {"value": ("dim_value", "dim_param")})
SHAPE = _spec([(1, "dim", MESSAGE, True, DIMENSION)])
TENSOR_TYPE = _spec([(1, "elem_type", VARINT, False, None), (2, "shape", MESSAGE, False, SHAPE)])
OTHER_TYPE = _spec([])
TYPE = _spec([(1, "tensor_type", MESSAGE, False, TENSOR_TYPE),
              (4, "sequence_type", MESSAGE, False, OTHER_TYPE),
              (5, "map_type", MESSAGE, False, OTHER_TYPE),
              (6, "denotation", STRING, False, None),
              (8, "sparse_tensor_type", MESSAGE, False, OTHER_TYPE),
              (9, "optional_type", MESSAGE, False, OTHER_TYPE)],
             {"value": ("tensor_type", "sequence_type", "map_type", "sparse_tensor_type",
                        "optional_type")})
VALUE_INFO = _spec([(1, "name", STRING, False, None), (2, "type", MESSAGE, False, TYPE),
                    (3, "doc_string", STRING, False, None)])
OPSET = _spec([(1, "domain", STRING, False, None), (2, "version", VARINT, False, None)])
# GRAPH and ATTRIBUTE refer to each other: filled in below
GRAPH = ({}, {}, {}, [])
ATTRIBUTE = _spec([
    (1, "name", STRING, False, None), (21, "ref_attr_name", STRING, False, None),
    (13, "doc_string", STRING, False, None), (20, "type", VARINT, False, None),
    (2, "f", FLOAT, False, None), (3, "i", VARINT, False, None), (4, "s", BYTES, False, None),
    (5, "t", MESSAGE, False, TENSOR), (6, "g", MESSAGE, False, GRAPH),
    (22, "sparse_tensor", MESSAGE, False, SPARSE_TENSOR),
    (7, "floats", FLOAT, True, None), (8, "ints", VARINT, True, None),
    (9, "strings", BYTES, True, None), (10, "tensors", MESSAGE, True, TENSOR),
    (11, "graphs", MESSAGE, True, GRAPH),
    (23, "sparse_tensors", MESSAGE, True, SPARSE_TENSOR)])
NODE = _spec([(1, "input", STRING, True, None), (2, "output", STRING, True, None),
              (3, "name", STRING, False, None), (4, "op_type", STRING, False, None),
              (7, "domain", STRING, False, None), (5, "attribute", MESSAGE, True, ATTRIBUTE),
              (6, "doc_string", STRING, False, None)])
_graph = _spec([
    (1, "node", MESSAGE, True, NODE), (2, "name", STRING, False, None),
    (5, "initializer", MESSAGE, True, TENSOR),
    (15, "sparse_initializer", MESSAGE, True, SPARSE_TENSOR),
    (10, "doc_string", STRING, False, None), (11, "input", MESSAGE, True, VALUE_INFO),
    (12, "output", MESSAGE, True, VALUE_INFO)])  # value_info (13): unused, skipped
GRAPH[0].update(_graph[0])
GRAPH[2].update(_graph[2])
GRAPH[3].extend(_graph[3])
MODEL = _spec([
    (1, "ir_version", VARINT, False, None), (8, "opset_import", MESSAGE, True, OPSET),
    (2, "producer_name", STRING, False, None), (3, "producer_version", STRING, False, None),
    (4, "domain", STRING, False, None), (5, "model_version", VARINT, False, None),
    (6, "doc_string", STRING, False, None), (7, "graph", MESSAGE, False, GRAPH),
    (14, "metadata_props", MESSAGE, True, STRING_ENTRY)])

_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")


class _Reader:
    def __init__(self, data):
        self.mv = memoryview(data).cast("B")

    def fail(self, pos, what):
        raise ModelError(f"not a valid ONNX model: {what} at byte {pos}")

    def varint(self, pos, end):
        mv = self.mv
        result = shift = 0
        while True:
            if pos >= end:
                self.fail(pos, "truncated varint")
            b = mv[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result, pos
            shift += 7
            if shift >= 70:
                self.fail(pos, "varint longer than 10 bytes")

    def message(self, spec, pos, end, depth):
        if depth > MAX_DEPTH:
            self.fail(pos, f"messages nested deeper than {MAX_DEPTH}")
        msg = Message(spec)
        d = msg.__dict__
        table = spec[3]
        mv = self.mv
        while pos < end:
            key = mv[pos]
            if 8 <= key < 0x80:  # one-byte key (fields 1-15): nearly all of them
                pos += 1
                field = table[key]
            else:
                if key < 0x80:
                    self.fail(pos, "field number 0")
                key, pos = self.varint(pos, end)
                if key >> 3 == 0:
                    self.fail(pos, "field number 0")
                field = _entry(spec[0], key >> 3, key & 7)
            wire = key & 7
            if wire == 2:
                length = mv[pos] if pos < end else 0x80
                if length < 0x80:
                    pos += 1
                else:
                    length, pos = self.varint(pos, end)
                stop = pos + length
                if stop > end:
                    self.fail(pos, f"length {length} runs past the end of its message")
                if field is not None:
                    name, kind, repeated, sub = field
                    if kind == MESSAGE:
                        value = self.message(sub, pos, stop, depth + 1)
                    elif kind == STRING:
                        value = str(mv[pos:stop], "utf-8", "replace")
                    elif kind == BYTES:
                        value = mv[pos:stop]
                    elif kind is None:
                        self.fail(pos, f"field {name!r} has the wrong wire type")
                    else:
                        self._packed(d, name, kind, pos, stop)
                        pos = stop
                        continue
                    _store(msg, name, repeated, value)
                pos = stop
            elif wire == 0:
                if pos < end and mv[pos] < 0x80:
                    value = mv[pos]
                    pos += 1
                else:
                    value, pos = self.varint(pos, end)
                if field is not None:
                    name, kind, repeated, _ = field
                    if kind is None:
                        self.fail(pos, f"field {name!r} has the wrong wire type")
                    _store(msg, name, repeated, _signed(value), kind)
            elif wire == 1 or wire == 5:
                size, fmt = (8, _F64) if wire == 1 else (4, _F32)
                if pos + size > end:
                    self.fail(pos, f"truncated fixed{8 * size}")
                if field is not None:
                    name, kind, repeated, _ = field
                    if kind is None:
                        self.fail(pos, f"field {name!r} has the wrong wire type")
                    _store(msg, name, repeated, fmt.unpack_from(mv, pos)[0], kind)
                pos += size
            else:
                self.fail(pos, f"unsupported wire type {wire}")
        if pos != end:
            self.fail(pos, "message overruns its length")
        return msg

    def _packed(self, d, name, kind, pos, stop):
        """A packed repeated number field (wire type 2): kept as bytes until used."""
        size = {FLOAT: 4, DOUBLE: 8}.get(kind)
        if size and (stop - pos) % size:
            self.fail(pos, f"packed field {name!r} of {stop - pos} bytes is not a "
                           f"multiple of {size}")
        numbers = d.get(name)
        if numbers is None:
            numbers = d[name] = Numbers(kind)
        try:
            numbers.add_packed(self.mv[pos:stop])
        except ModelError as exc:
            raise ModelError(f"{exc} (field {name!r} at byte {pos})") from None


def _store(msg, name, repeated, value, kind=None):
    d = msg.__dict__
    if repeated:
        if name in d:
            d[name].append(value)
        elif kind in _NUMBER_DTYPES:
            d[name] = Numbers(kind)
            d[name].append(value)
        else:
            d[name] = [value]
    else:
        d[name] = value
        msg._set.add(name)


def _signed(value):
    """A varint as protobuf reads an int64: its low 64 bits, two's complement (a 10th
    byte may carry bits beyond them: dropped, as protobuf does)."""
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def parse_model(data):
    """bytes -> Message with ModelProto's fields; ModelError on malformed input."""
    reader = _Reader(data)
    return reader.message(MODEL, 0, len(reader.mv), 0)
