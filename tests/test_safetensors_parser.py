"""The C++ safetensors reader (llmos._core.safetensors_*), checked against the reference
``safetensors`` library: roundtrips of files it writes, a corpus of malformed files
(tests/safetensors_corpus.py) and fuzzing. The rule: llmos rejects every file the reference
rejects, parses every other file to the same tensors, and departs from the reference only in
the deliberate ways listed in STRICTER_THAN_REFERENCE, always by raising SafetensorsError.
"""

from __future__ import annotations

import json
import os
import re
import struct

import numpy as np
import pytest
import safetensors
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

import llmos._core as core
from llmos.errors import ModelFileError, SafetensorsError, TensorError

try:  # tests/ may or may not be a package
    from . import safetensors_corpus as corpus
except ImportError:
    import safetensors_corpus as corpus


# Corpus cases the reference accepts and llmos rejects on purpose, with the reason.
STRICTER_THAN_REFERENCE = {
    "duplicate tensor key": "the reference silently keeps the last entry; which weights load is ambiguous",
    "duplicate tensor key, different entries": "same",
    "duplicate tensor key via escape": "same; keys compare after unescaping",
    "duplicate metadata key": "the reference keeps the last value",
    "__metadata__ is null": "__metadata__ must be an object of strings when present",
    "unknown field in tensor": "a tensor entry has exactly dtype, shape, data_offsets (typos are not ignored)",
    "unknown field null in tensor": "same",
    "tensor entry is array": "serde also accepts a struct as a [dtype, shape, offsets] sequence; the format says object",
    "dtype object": 'serde also accepts the enum as {"F32": null}; the format says string',
    "leading space before {": "the format says the header starts with '{'",
    "leading newline before {": "same",
    "dtype F4": "sub-byte and complex dtypes are not supported by this runtime",
    "dtype F6_E2M3": "same",
    "dtype F8_E8M0": "same",
    "dtype C64": "same",
    "empty tensor with dim 2^63": "dimensions must fit int64 (shape is int64 in llmos and numpy)",
    "empty tensor with dim 2^64-1": "same",
    "empty tensor with dims 2^62 x 4 bytes": "non-zero dims x element size must fit int64, as numpy requires",
    "empty tensor with dims 2^63-1": "same",
}

# How each deliberate difference is worded in our errors; the fuzzer uses this to check that a
# file the reference accepts is rejected only for one of the reasons above.
STRICTER_MESSAGES = re.compile(
    r"duplicate tensor name|duplicate metadata key|duplicate __metadata__"
    r"|__metadata__': expected an object|unknown field|tensor entry must be an object"
    r"|dtype: expected a string|header must start with '\{'|unknown dtype"
    r"|exceeds 2\^63-1|is too large")


# ----------------------------------------------------------------------------------------
# helpers


def reference_parse(data: bytes):
    """{name: (dtype, shape, bytes)} from the reference, or None when it rejects the image."""
    try:
        items = safetensors.deserialize(data)
    except Exception:  # noqa: BLE001 - any rejection counts
        return None
    return {name: (info["dtype"], list(info["shape"]), bytes(info["data"])) for name, info in items}


def ours_parse(data: bytes):
    """(header-order list of tensor dicts, metadata, {name: (dtype, shape, bytes)})."""
    tensors, metadata = core.safetensors_parse_bytes(data)
    start = 8 + struct.unpack("<Q", data[:8])[0]
    as_dict = {t["name"]: (t["dtype"], t["shape"], data[start + t["data_offsets"][0]:start + t["data_offsets"][1]])
               for t in tensors}
    assert len(as_dict) == len(tensors)
    return tensors, metadata, as_dict


def header_json(data: bytes):
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n].decode("utf-8"), object_pairs_hook=list)


NUMPY_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16,
    "F16": np.float16, "BF16": np.uint16, "U32": np.uint32, "I32": np.int32, "F32": np.float32,
    "U64": np.uint64, "I64": np.int64, "F64": np.float64, "F8_E4M3": np.uint8, "F8_E5M2": np.uint8,
}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("st_corpus")


# ----------------------------------------------------------------------------------------
# roundtrips


def test_roundtrip_numpy_api(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((2, 3, 4)).astype(np.float16),
        "f64": rng.standard_normal((7,)),
        "i8": rng.integers(-128, 128, (4, 4), dtype=np.int8),
        "u8": rng.integers(0, 256, (9,), dtype=np.uint8),
        "i16": rng.integers(-1000, 1000, (3,), dtype=np.int16),
        "u16": rng.integers(0, 65535, (3,), dtype=np.uint16),
        "i32": rng.integers(-(2**31), 2**31, (2, 2), dtype=np.int32),
        "u32": rng.integers(0, 2**32, (2,), dtype=np.uint32),
        "i64": np.array([-(2**63), 2**63 - 1, 0], dtype=np.int64),
        "u64": np.array([2**64 - 1, 0], dtype=np.uint64),
        "bool": np.array([[True, False], [False, True]]),
        "scalar": np.array(3.25, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float16),
        "empty_i64": np.zeros((2, 0, 2), dtype=np.int64),
        "model.layers.0.self_attn.q_proj.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
    }
    metadata = {"format": "pt", "note": "caf\u00e9 \U0001f600", "": ""}
    path = str(tmp_path / "model.safetensors")
    save_file(tensors, path, metadata=metadata)

    infos, meta = core.safetensors_read_header(path)
    assert meta == metadata
    assert {t["name"] for t in infos} == set(tensors)
    with safetensors.safe_open(path, "numpy") as ref:
        assert ref.metadata() == metadata
        for t in infos:
            assert t["shape"] == list(tensors[t["name"]].shape)
            assert t["shape"] == list(ref.get_slice(t["name"]).get_shape())
            assert t["dtype"] == ref.get_slice(t["name"]).get_dtype()
    for name, want in tensors.items():
        got = core.safetensors_read_tensor(path, name)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        assert got.flags.writeable and got.flags.c_contiguous
    # The in-memory parser agrees with the file reader.
    with open(path, "rb") as f:
        assert core.safetensors_parse_bytes(f.read()) == (infos, meta)


def test_roundtrip_raw_dtypes(tmp_path):
    """BF16 and FP8 written from raw bytes come back as their raw bits."""
    bf16 = np.array([0x3F80, 0xC000, 0x7FC0, 0x0001, 0x8000, 0x7F80], dtype=np.uint16)
    tensors = {
        "bf16": ("BF16", [2, 3], bf16.tobytes()),
        "bf16_scalar": ("BF16", [], np.array([0x4049], np.uint16).tobytes()),
        "bf16_empty": ("BF16", [0, 5], b""),
        "e4m3": ("F8_E4M3", [4], bytes([0x00, 0x38, 0xFF, 0x7E])),
        "e5m2": ("F8_E5M2", [2, 2], bytes([0x3C, 0xBC, 0x7B, 0x01])),
        "f16": ("F16", [2], np.array([1.5, -2.0], np.float16).tobytes()),
    }
    path = str(tmp_path / "raw.safetensors")
    with open(path, "wb") as f:
        f.write(corpus.reference_serialize(tensors, {"k": "v"}))
    infos, meta = core.safetensors_read_header(path)
    assert meta == {"k": "v"}
    assert {t["name"]: (t["dtype"], t["shape"]) for t in infos} == {
        name: (dt, shape) for name, (dt, shape, _) in tensors.items()}
    for name, (dt, shape, raw) in tensors.items():
        got = core.safetensors_read_tensor(path, name)
        assert got.dtype == NUMPY_DTYPES[dt]
        assert got.shape == tuple(shape)
        assert got.tobytes() == raw
    np.testing.assert_array_equal(core.safetensors_read_tensor(path, "bf16").ravel(), bf16)


def test_read_errors(tmp_path):
    path = str(tmp_path / "one.safetensors")
    save_file({"a": np.ones(2, np.float32)}, path)
    with pytest.raises(TensorError) as ei:
        core.safetensors_read_tensor(path, "b")
    assert path in str(ei.value) and "'b'" in str(ei.value)
    assert not isinstance(ei.value, SafetensorsError)

    missing = str(tmp_path / "missing.safetensors")
    with pytest.raises(ModelFileError) as ei:
        core.safetensors_read_header(missing)
    assert missing in str(ei.value)
    with pytest.raises(ModelFileError):
        core.safetensors_read_header(str(tmp_path))  # a directory
    if hasattr(os, "mkfifo"):  # a FIFO must fail fast, not block in open()
        fifo = str(tmp_path / "fifo")
        os.mkfifo(fifo)
        with pytest.raises(ModelFileError):
            core.safetensors_read_header(fifo)

    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(SafetensorsError) as ei:
        core.safetensors_read_header(str(empty))
    assert str(empty) in str(ei.value)


# ----------------------------------------------------------------------------------------
# corpus

BAD = corpus.bad_cases()
# Legal by the reference and so by llmos: tensor names are opaque keys, so "../x", "", names
# with NUL or control characters and a 64 KiB name all load (nothing uses a name as a path).
LEGAL = corpus.legal_cases()


def test_corpus_names_unique_and_stricter_list_known():
    names = [c.name for c in BAD]
    assert len(names) == len(set(names))
    assert set(STRICTER_THAN_REFERENCE) <= set(names)


@pytest.mark.parametrize("index", range(len(BAD)), ids=[c.name for c in BAD])
def test_bad_file_rejected(index, corpus_dir):
    case = BAD[index]
    path = str(corpus_dir / f"bad{index:04d}.safetensors")
    with open(path, "wb") as f:
        f.write(case.data)
    with pytest.raises(SafetensorsError) as ei:
        core.safetensors_read_header(path)
    assert path in str(ei.value)
    with pytest.raises(SafetensorsError) as ei2:
        core.safetensors_parse_bytes(case.data, "image-under-test")
    assert "image-under-test" in str(ei2.value)
    assert str(ei.value).replace(path, "") == str(ei2.value).replace("image-under-test", "")

    if reference_parse(case.data) is not None:
        assert case.name in STRICTER_THAN_REFERENCE, (
            f"the reference accepts {case.name!r}: list it as deliberately stricter or fix the parser")
        assert STRICTER_MESSAGES.search(str(ei.value)), str(ei.value)


@pytest.mark.parametrize("index", range(len(LEGAL)), ids=[c.name for c in LEGAL])
def test_legal_file_matches_reference(index, corpus_dir):
    case = LEGAL[index]
    ref = reference_parse(case.data)
    assert ref is not None, "the corpus says legal but the reference rejects it"
    tensors, metadata, ours = ours_parse(case.data)
    assert ours == ref
    # Header order and metadata as written.
    members = header_json(case.data)
    assert [t["name"] for t in tensors] == [k for k, _ in members if k != "__metadata__"]
    assert metadata == dict(dict(members).get("__metadata__", []))

    path = str(corpus_dir / f"legal{index:04d}.safetensors")
    with open(path, "wb") as f:
        f.write(case.data)
    assert core.safetensors_read_header(path) == (tensors, metadata)
    for name, (dtype, shape, raw) in ours.items():
        arr = core.safetensors_read_tensor(path, name)
        assert arr.shape == tuple(shape) and arr.dtype == NUMPY_DTYPES[dtype]
        assert arr.tobytes() == raw


# ----------------------------------------------------------------------------------------
# fuzzing

BASES = corpus.valid_bases()
INTERESTING = b'{}[]",:0123456789-.eE\\u \x00\xff\n'


def _pack_with(data: bytes, header: bytes) -> bytes:
    n = struct.unpack("<Q", data[:8])[0]
    return struct.pack("<Q", len(header)) + header + data[8 + n:]


class _Obj(list):
    """A JSON object as a list of (key, value) pairs, so duplicates and order survive."""


def _encode(v, ascii_only: bool) -> str:
    if isinstance(v, _Obj):
        return "{" + ",".join(json.dumps(k, ensure_ascii=ascii_only) + ":" + _encode(x, ascii_only)
                              for k, x in v) + "}"
    if isinstance(v, dict):
        return _encode(_Obj(v.items()), ascii_only)
    if isinstance(v, list):
        return "[" + ",".join(_encode(x, ascii_only) for x in v) + "]"
    return json.dumps(v, ensure_ascii=ascii_only)


@st.composite
def header_edit(draw, data: bytes) -> bytes:
    """A structural edit of a still-parseable header (keeps N consistent)."""
    n = struct.unpack("<Q", data[:8])[0]
    try:
        members = json.loads(data[8:8 + n].decode("utf-8"), object_pairs_hook=_Obj)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return data
    if not isinstance(members, _Obj):
        return data
    payload = data[8 + n:]
    i = draw(st.integers(0, max(0, len(members) - 1)))
    op = draw(st.sampled_from(["dtype", "shape", "offset", "drop_field", "add_field", "drop",
                               "duplicate", "rename", "metadata", "payload", "swap"]))
    entry = dict(members[i][1]) if members and isinstance(members[i][1], _Obj) else None
    if op == "dtype" and entry is not None:
        entry["dtype"] = draw(st.sampled_from(list(corpus.DTYPE_SIZES) + ["F4", "C64", "f32", ""]))
    elif op == "shape" and entry is not None:
        entry["shape"] = draw(st.lists(st.integers(0, 4) | st.sampled_from([-1, 2**63, 2**64, 4194305]),
                                       max_size=4))
    elif op == "offset" and entry is not None and isinstance(entry.get("data_offsets"), list):
        offs = list(entry["data_offsets"])
        if offs:
            j = draw(st.integers(0, len(offs) - 1))
            offs[j] = draw(st.integers(-1, len(payload) + 2) | st.sampled_from([2**64 - 1, 2**64]))
        entry["data_offsets"] = offs
    elif op == "drop_field" and entry:
        entry.pop(draw(st.sampled_from(sorted(entry))))
    elif op == "add_field" and entry is not None:
        entry[draw(st.sampled_from(["x", "dtype", "offsets"]))] = draw(st.sampled_from([1, None, "F32"]))
    elif op == "drop" and members:
        members.pop(i)
    elif op == "duplicate" and members:
        members.append(members[i])
    elif op == "rename" and members:
        members[i] = (draw(st.sampled_from(["", "__metadata__", "a", "../x", "a\x00"])), members[i][1])
    elif op == "metadata":
        members.append(("__metadata__", draw(st.none() | st.dictionaries(
            st.text(max_size=3), st.text(max_size=3) | st.integers(), max_size=3))))
    elif op == "payload":
        payload = payload[:-1] if payload and draw(st.booleans()) else payload + b"\x00"
    elif op == "swap" and len(members) > 1:
        members[0], members[-1] = members[-1], members[0]
    if entry is not None and op in ("dtype", "shape", "offset", "drop_field", "add_field"):
        members[i] = (members[i][0], _Obj(entry.items()))
    text = (_encode(members, draw(st.booleans())) + " " * draw(st.integers(0, 7))).encode()
    return struct.pack("<Q", len(text)) + text + payload


@st.composite
def mutated_file(draw) -> bytes:
    data = draw(st.sampled_from(BASES))
    for _ in range(draw(st.integers(1, 3))):
        n = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else 0
        in_header = 0 < n and 8 + n <= len(data)
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "length",
                                   "edit", "edit", "edit"]))
        if op == "edit":
            data = draw(header_edit(data)) if len(data) >= 8 else data
            continue
        if not data:
            break
        lo, hi = (8, 8 + n - 1) if in_header and draw(st.integers(0, 7)) else (0, len(data) - 1)
        pos = draw(st.integers(lo, hi))
        if op == "flip":
            data = data[:pos] + bytes([data[pos] ^ (1 << draw(st.integers(0, 7)))]) + data[pos + 1:]
        elif op == "set":
            data = data[:pos] + bytes([draw(st.sampled_from(INTERESTING))]) + data[pos + 1:]
        elif op == "insert" and in_header and pos >= 8:
            data = _pack_with(data, data[8:pos] + bytes([draw(st.sampled_from(INTERESTING))]) + data[pos:8 + n])
        elif op == "delete" and in_header and pos >= 8:
            data = _pack_with(data, data[8:pos] + data[pos + 1:8 + n])
        elif op == "truncate":
            data = data[:pos]
        elif op == "length" and len(data) >= 8:
            data = struct.pack("<Q", max(0, n + draw(st.integers(-3, 3)))) + data[8:]
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_file())
def test_fuzz_mutations_agree_with_reference(data):
    ref = reference_parse(data)
    try:
        _, _, ours = ours_parse(data)
    except SafetensorsError as e:
        event("rejected by both" if ref is None else "rejected by llmos only (stricter)")
        if ref is not None:  # allowed only for the deliberate differences
            assert STRICTER_MESSAGES.search(str(e)), f"rejected a file the reference accepts: {e}"
        return
    event("accepted by llmos")
    assert ref is not None, "accepted a file the reference rejects"
    assert ours == ref


tensor_names = st.text(alphabet=st.characters(codec="utf-8"), max_size=12).filter(
    lambda s: s != "__metadata__")


@st.composite
def tensor_spec(draw):
    dtype = draw(st.sampled_from(sorted(corpus.DTYPE_SIZES)))
    shape = draw(st.lists(st.integers(0, 4), max_size=4))
    size = int(np.prod(shape, dtype=np.int64)) * corpus.DTYPE_SIZES[dtype]
    return dtype, shape, draw(st.binary(min_size=size, max_size=size))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensors=st.dictionaries(tensor_names, tensor_spec(), max_size=8),
       metadata=st.none() | st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4))
def test_structured_roundtrip(tensors, metadata, tmp_path_factory):
    data = corpus.reference_serialize(tensors, metadata)
    if reference_parse(data) is None:
        # The writer can emit a header its own reader rejects (safetensors 0.8.0 writes
        # '{},"__metadata__":{}}' for no tensors and empty metadata); we must reject it too.
        with pytest.raises(SafetensorsError):
            core.safetensors_parse_bytes(data)
        return
    path = str(tmp_path_factory.mktemp("rt") / "t.safetensors")
    with open(path, "wb") as f:
        f.write(data)
    infos, meta = core.safetensors_read_header(path)
    assert meta == (metadata or {})
    assert {t["name"]: (t["dtype"], t["shape"]) for t in infos} == {
        name: (dt, shape) for name, (dt, shape, _) in tensors.items()}
    assert core.safetensors_parse_bytes(data) == (infos, meta)
    for name, (dt, shape, raw) in tensors.items():
        arr = core.safetensors_read_tensor(path, name)
        assert arr.shape == tuple(shape) and arr.dtype == NUMPY_DTYPES[dt]
        assert arr.tobytes() == raw
