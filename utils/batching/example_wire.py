"""Encode and decode a serialised ``tf.train.Example`` straight in the protobuf wire format.

``split_and_batch`` reads every record of an export in reader threads. Parsing with the
protobuf classes holds the GIL for the whole record (the message, then one Python float
per value when converted to NumPy), so two reader threads ran slower than one. Here only
the ~30 feature headers are walked in Python; each packed ``FloatList`` becomes a
zero-copy NumPy view of the record's bytes, so the threads spend their time in inflate
and NumPy, which release the GIL. No TensorFlow import.

The messages (``tensorflow/core/example/{example,feature}.proto``)::

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }      // entries: key = 1, value = 2
    Feature  { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                            Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed = true]; }
    Int64List { repeated int64 value = 1 [packed = true]; }

Both packed and unpacked encodings of the repeated fields are accepted, unknown fields
are skipped, and a later map entry or ``kind`` replaces an earlier one, as protobuf does.
:func:`encode_example` writes the bytes of protobuf's deterministic serialisation (map
entries sorted by key), so writers need no TensorFlow either.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
Buffer = bytes | memoryview
#: A feature's value: float32 or int64 array, or the list of byte strings.
FeatureValue = np.ndarray | list[bytes]


class ExampleDecodeError(ValueError):
    """The bytes are not a well-formed ``tf.train.Example``."""


def _varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ExampleDecodeError("a varint longer than 10 bytes")
    raise ExampleDecodeError("the message ends inside a varint")


def _fields(buf: Buffer, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(field number, wire type, a, b)`` of each field in ``buf[start:end]``: for
    varints ``a`` is the value, otherwise the value is ``buf[a:b]``."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ExampleDecodeError("field number 0")
        if wire == VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
            continue
        if wire == LENGTH:
            length, pos = _varint(buf, pos, end)
        elif wire in (FIXED32, FIXED64):
            length = 4 if wire == FIXED32 else 8
        else:
            raise ExampleDecodeError(f"unsupported wire type {wire}")
        if pos + length > end:
            raise ExampleDecodeError("a field runs past the end of its message")
        yield number, wire, pos, pos + length
        pos += length


def _varint_array(data: np.ndarray) -> np.ndarray:
    """Decode packed varints (uint8 array) into int64 values, vectorised."""
    if data.size == 0:
        return np.zeros(0, np.int64)
    ends = np.flatnonzero(data < 0x80)
    if ends.size == 0 or ends[-1] != data.size - 1:
        raise ExampleDecodeError("packed varints end inside a value")
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 10:
        raise ExampleDecodeError("a varint longer than 10 bytes")
    owner = np.repeat(np.arange(ends.size), lengths)
    shift = (7 * (np.arange(data.size) - starts[owner])).astype(np.uint64)
    values = np.zeros(ends.size, np.uint64)
    np.bitwise_or.at(values, owner, (data & 0x7F).astype(np.uint64) << shift)
    return values.view(np.int64)


def _float_list(buf: Buffer, start: int, end: int) -> np.ndarray:
    parts = []
    for number, wire, a, b in _fields(buf, start, end):
        if number != 1:
            continue
        if wire == LENGTH and (b - a) % 4 == 0:
            parts.append(np.frombuffer(buf, "<f4", (b - a) // 4, a))
        elif wire == FIXED32:
            parts.append(np.frombuffer(buf, "<f4", 1, a))
        else:
            raise ExampleDecodeError(f"FloatList value with wire type {wire}, {b - a} bytes")
    if len(parts) == 1:
        return parts[0].astype(np.float32, copy=False)
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def _int64_list(buf: Buffer, start: int, end: int) -> np.ndarray:
    parts = []
    for number, wire, a, b in _fields(buf, start, end):
        if number != 1:
            continue
        if wire == LENGTH:
            parts.append(_varint_array(np.frombuffer(buf, np.uint8, b - a, a)))
        elif wire == VARINT:
            parts.append(np.array([a], np.uint64).view(np.int64))
        else:
            raise ExampleDecodeError(f"Int64List value with wire type {wire}")
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _bytes_list(buf: Buffer, start: int, end: int) -> list[bytes]:
    values = []
    for number, wire, a, b in _fields(buf, start, end):
        if number == 1:
            if wire != LENGTH:
                raise ExampleDecodeError(f"BytesList value with wire type {wire}")
            values.append(bytes(buf[a:b]))
    return values


_KINDS = {1: _bytes_list, 2: _float_list, 3: _int64_list}


def _feature(buf: Buffer, start: int, end: int) -> FeatureValue | None:
    value = None
    for number, wire, a, b in _fields(buf, start, end):
        if number in _KINDS:
            if wire != LENGTH:
                raise ExampleDecodeError(f"Feature kind {number} with wire type {wire}")
            value = _KINDS[number](buf, a, b)
    return value


def _float_entry(buf: Buffer, a: int, b: int) -> tuple[str, np.ndarray] | None:
    """A map entry in the layout every writer uses for a float feature, read without the
    general field loop: key (tag 0x0a), then value (0x12) = Feature holding only
    float_list (0x12) = FloatList holding only one packed value field (0x0a). ``None``
    for any other layout (the general parser then reads it)."""
    if buf[a] != 0x0A:
        return None
    key_size, key_start = _varint(buf, a + 1, b)
    pos = key_start + key_size  # the value's tag
    for tag in (0x12, 0x12, 0x0A):  # Entry.value, Feature.float_list, FloatList.value
        if pos >= b or buf[pos] != tag:
            return None
        size, pos = _varint(buf, pos + 1, b)
        if pos + size != b:
            return None
    if size % 4:
        return None
    try:
        key = str(buf[key_start : key_start + key_size], "utf-8")
    except UnicodeDecodeError:
        return None
    return key, np.frombuffer(buf, "<f4", size // 4, pos)


def decode_example(serialized: Buffer) -> dict[str, FeatureValue]:
    """The features of one serialised ``tf.train.Example``.

    Returns:
        Feature name -> float32 array (``float_list``), int64 array (``int64_list``) or
        list of byte strings (``bytes_list``). Float arrays are read-only views of
        ``serialized`` (no copy). A feature with no kind set is left out.

    Raises:
        ExampleDecodeError: malformed wire data (truncated, bad lengths, wrong types).
    """
    buf = serialized if isinstance(serialized, bytes) else memoryview(serialized).cast("B")
    features: dict[str, FeatureValue] = {}
    for number, wire, a, b in _fields(buf, 0, len(buf)):
        if number != 1:
            continue
        if wire != LENGTH:
            raise ExampleDecodeError(f"Example.features with wire type {wire}")
        for entry_number, entry_wire, ea, eb in _fields(buf, a, b):
            if entry_number != 1:
                continue
            if entry_wire != LENGTH:
                raise ExampleDecodeError(f"a feature map entry with wire type {entry_wire}")
            if (fast := _float_entry(buf, ea, eb)) is not None:
                features[fast[0]] = fast[1]
                continue
            key, value = "", None
            for field_number, field_wire, fa, fb in _fields(buf, ea, eb):
                if field_wire != LENGTH and field_number in (1, 2):
                    raise ExampleDecodeError("a feature map entry with a non-message field")
                if field_number == 1:
                    try:
                        key = str(buf[fa:fb], "utf-8")
                    except UnicodeDecodeError as err:
                        raise ExampleDecodeError(f"a feature name is not UTF-8 ({err})") from None
                elif field_number == 2:
                    value = _feature(buf, fa, fb)
            if value is None:
                features.pop(key, None)
            else:
                features[key] = value
    return features


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _nested(tag: int, pieces: list, size: int) -> tuple[list, int]:
    """A length-delimited field kept as pieces (joined once, at the end): the header
    (tag byte, size varint), then the payload's pieces of ``size`` bytes in all."""
    head = bytes([tag]) + _varint_bytes(size)
    return [head, *pieces], len(head) + size


def _example_pieces(
    floats: Mapping[str, np.ndarray], byte_features: Mapping[str, bytes] | None
) -> tuple[list, int]:
    """The serialised ``Example`` as pieces in order (headers as ``bytes``, float data
    as ``uint8`` views of the arrays, not copied) and their total size."""
    features: dict[bytes, tuple[list, int]] = {}  # name -> Feature message
    for name, array in floats.items():
        packed = np.ascontiguousarray(array, "<f4").reshape(-1).view(np.uint8)
        # float_list (field 2) of a packed FloatList; an empty list writes no field
        inner = _nested(0x0A, [packed], packed.size) if packed.size else ([], 0)
        features[name.encode("utf-8")] = _nested(0x12, *inner)
    for name, value in (byte_features or {}).items():  # bytes_list (field 1), one value
        features[name.encode("utf-8")] = _nested(0x0A, *_nested(0x0A, [value], len(value)))
    pieces: list = []  # Features: one map entry (field 1) per feature, sorted by key
    total = 0
    for key in sorted(features):
        key_pieces, key_size = _nested(0x0A, [key], len(key))
        value_pieces, value_size = _nested(0x12, *features[key])
        entry, size = _nested(0x0A, [*key_pieces, *value_pieces], key_size + value_size)
        pieces.extend(entry)
        total += size
    return _nested(0x0A, pieces, total)


def encode_example(
    floats: Mapping[str, np.ndarray], byte_features: Mapping[str, bytes] | None = None
) -> bytes:
    """Serialise a ``tf.train.Example``: the same bytes as TensorFlow's
    ``Example.SerializeToString(deterministic=True)``.

    The float data is copied once (into the result): fields are built as pieces and
    joined at the end, which at 225 px (8 MB a record) saves ~8 ms a record.

    Args:
        floats: feature name -> array of any shape (stored row-major as a packed float32
            ``FloatList``).
        byte_features: feature name -> one byte string (a one-value ``BytesList``).
    """
    return b"".join(_example_pieces(floats, byte_features)[0])


def encode_example_into(
    buffer: bytearray,
    offset: int,
    floats: Mapping[str, np.ndarray],
    byte_features: Mapping[str, bytes] | None = None,
    tail: int = 0,
) -> int:
    """Serialise a ``tf.train.Example`` into ``buffer`` at ``offset``: the bytes of
    :func:`encode_example`, without a fresh result object.

    ``buffer`` grows (never shrinks) to hold ``offset`` + the record + ``tail`` bytes,
    so a writer that keeps one buffer across records writes into memory it already
    has (a fresh 8 MB object a 225 px record costs page faults); the float data is
    copied by NumPy, which releases the GIL. No view of ``buffer`` may be held while
    it grows.

    Returns:
        The record's size in bytes (it fills ``buffer[offset:offset + size]``).
    """
    pieces, total = _example_pieces(floats, byte_features)
    end = offset + total + tail
    if len(buffer) < end:
        buffer.extend(bytes(end - len(buffer)))
    array, view, pos = np.frombuffer(buffer, np.uint8), memoryview(buffer), offset
    for piece in pieces:
        size = len(piece)
        if isinstance(piece, np.ndarray):  # float data: NumPy's copy releases the GIL
            array[pos : pos + size] = piece
        else:  # a header of a few bytes
            view[pos : pos + size] = piece
        pos += size
    view.release()
    return total
