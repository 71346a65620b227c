"""The wire-format Example decoder against protobuf's own parser (TensorFlow's classes):
same features for what writers produce, for the other legal encodings (unpacked,
split packed runs, unknown fields, repeated keys), and an error wherever protobuf fails."""

from __future__ import annotations

import numpy as np
import pytest

from extract_GPS_images.tfrecord import encode_example
from utils.batching.example_wire import ExampleDecodeError, decode_example


def _example_class():
    """TensorFlow's Example message, imported when a test runs: TensorFlow imported while
    pytest collects (before torch and triton) crashes the later triton import."""
    from tensorflow.core.example.example_pb2 import Example  # noqa: PLC0415

    return Example


def _reference(serialized: bytes) -> dict:
    """Feature name -> value, by protobuf's parser."""
    out = {}
    for name, feature in _example_class().FromString(serialized).features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "float_list":
            out[name] = np.array(feature.float_list.value, np.float32)
        elif kind == "int64_list":
            out[name] = np.array(feature.int64_list.value, np.int64)
        elif kind == "bytes_list":
            out[name] = list(feature.bytes_list.value)
    return out


def _same(ours: dict, reference: dict) -> bool:
    if ours.keys() != reference.keys():
        return False
    for name, value in reference.items():
        if isinstance(value, list):
            if ours[name] != value:
                return False
        elif ours[name].dtype != value.dtype or not np.array_equal(ours[name], value):
            return False
    return True


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _example(*entries: bytes, extra: bytes = b"") -> bytes:
    """Example { features { entries } } with ``extra`` raw fields inside Features."""
    return _field(1, b"".join(_field(1, e) for e in entries) + extra)


def _entry(name: str, feature: bytes) -> bytes:
    return _field(1, name.encode()) + _field(2, feature)


def test_encoder_writes_protobufs_deterministic_bytes() -> None:
    """The hand-written encoder gives the bytes of protobuf's deterministic serialisation
    (sorted map keys, packed floats, empty lists without a field) for the same features."""
    example_class = _example_class()
    rng = np.random.default_rng(1)
    floats = {
        "B4_q2": rng.normal(size=(5, 5)),  # float64 in, float32 stored
        "B10": np.float32([np.inf, -0.0, np.nan, 1e-42]),
        "ä-band": np.arange(3, dtype=np.float32),
        "empty": np.zeros(0, np.float32),
        "a" * 200: np.ones(70_000, np.float32),  # multi-byte lengths everywhere
    }
    ours = encode_example(floats, cell_id="cell/7")
    reference = example_class()
    for name, values in floats.items():
        reference.features.feature[name].float_list.value.extend(
            np.asarray(values, np.float32).ravel().tolist()
        )
    reference.features.feature["cell_id"].bytes_list.value.append(b"cell/7")
    assert ours == reference.SerializeToString(deterministic=True)
    assert encode_example({}) == example_class(features={}).SerializeToString(deterministic=True)


def test_records_as_writers_make_them() -> None:
    rng = np.random.default_rng(0)
    bands = {f"B{i}": rng.normal(size=(7, 7)).astype(np.float32) for i in range(5)}
    bands["empty"] = np.zeros(0, np.float32)
    serialized = encode_example(bands, cell_id="Cell 7/ä")
    ours = decode_example(serialized)
    assert _same(ours, _reference(serialized))
    assert np.array_equal(ours["B3"], bands["B3"].ravel())
    assert ours["cell_id"] == ["Cell 7/ä".encode()]
    assert decode_example(memoryview(serialized)).keys() == ours.keys()


def test_int64_and_bytes_lists() -> None:
    example = _example_class()()
    feature = example.features.feature
    feature["ints"].int64_list.value.extend([0, 1, -1, 127, 128, 2**40, -(2**63), 2**63 - 1])
    feature["texts"].bytes_list.value.extend([b"", b"a", bytes(range(256))])
    feature["none"].SetInParent()  # a Feature with no kind
    serialized = example.SerializeToString()
    ours = decode_example(serialized)
    assert _same(ours, _reference(serialized))
    assert "none" not in ours


def test_other_legal_encodings() -> None:
    values = np.array([1.5, -2.25, 3e-5], np.float32)
    unpacked_floats = b"".join(b"\x0d" + v.tobytes() for v in values)  # tag 1, fixed32
    unpacked_ints = b"".join(b"\x08" + _varint(v) for v in (5, -7, 300))  # tag 1, varint
    split_packed = _field(1, values[:2].tobytes()) + _field(1, values[2:].tobytes())
    unknown = b"\x28\x07"  # field 5, varint 7: skipped
    serialized = _example(
        _entry("unpacked", _field(2, unpacked_floats)),
        _entry("ints", _field(3, unpacked_ints)),
        _entry("split", _field(2, split_packed)),
        _entry("later_wins", _field(2, _field(1, values[:1].tobytes()))),
        _entry("later_wins", unknown + _field(2, _field(1, values.tobytes()))),
        extra=unknown,
    )
    ours = decode_example(serialized + unknown)
    assert _same(ours, _reference(serialized + unknown))
    assert np.array_equal(ours["later_wins"], values)
    assert np.array_equal(ours["ints"], [5, -7, 300])


def test_every_truncation_fails_or_agrees_with_protobuf() -> None:
    serialized = encode_example({"a": np.arange(6.0), "bb": np.ones(3)}, cell_id="c")
    for end in range(len(serialized)):
        prefix = serialized[:end]
        try:
            reference = _reference(prefix)
        except Exception:  # noqa: BLE001 (protobuf's DecodeError)
            with pytest.raises(ExampleDecodeError):
                decode_example(prefix)
            continue
        assert _same(decode_example(prefix), reference), end


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x0a\xff",  # a length running past the end
        b"\x0f",  # wire type 7
        b"\x0a\x05\x0a\x03\x0a\x01",  # nested length past its parent
        b"\x0a\x80",  # varint cut short
        b"\x08" + b"\xff" * 11,  # varint longer than 10 bytes
        _example(_entry("x", _field(2, _field(1, b"\x00\x00\x80")))),  # 3 bytes of floats
    ],
)
def test_malformed_bytes_raise(garbage: bytes) -> None:
    with pytest.raises(ExampleDecodeError):
        decode_example(garbage)
