"""Hand-made safetensors images for testing and fuzzing parsers.

``bad_cases()`` returns malformed images (every one must be rejected by llmos; most are
rejected by the reference too), ``legal_cases()`` returns unusual images that the format
allows and that must parse identically in llmos and in the reference ``safetensors``
library. ``valid_bases()`` returns small valid images for mutation-based fuzzing.
Everything is generated in code, so the corpus needs no data files; tools can import this
module directly (it depends only on the standard library and, for ``reference_serialize``,
on numpy and safetensors).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

# Element sizes of the dtypes llmos knows (cpp/core/dtype.h).
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}

# Names the safetensors Python serializer takes for each header dtype.
REFERENCE_DTYPE_NAMES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "U16": "uint16", "I16": "int16", "F16": "float16",
    "BF16": "bfloat16", "U32": "uint32", "I32": "int32", "F32": "float32",
    "U64": "uint64", "I64": "int64", "F64": "float64",
}

U64_MAX = 2**64 - 1
I64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes


def pack(header, data: bytes = b"", n: int | None = None) -> bytes:
    """A file image: 8-byte little-endian header length (``n``, default: the real length),
    the header (str is UTF-8 encoded, dict is JSON-encoded), then ``data``."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    if isinstance(header, str):
        header = header.encode("utf-8")
    length = len(header) if n is None else n
    return struct.pack("<Q", length) + header + data


class Raw(str):
    """JSON text inserted verbatim by entry()."""


def entry(dtype="F32", shape=(1,), offsets=(0, 4)) -> str:
    """JSON text of one tensor entry. A plain str dtype is JSON-quoted; a Raw dtype and a str
    shape or offsets are inserted verbatim; sequences are JSON-encoded."""

    def j(v):
        return v if isinstance(v, str) else json.dumps(list(v), separators=(",", ":"))

    dt = dtype if isinstance(dtype, Raw) else json.dumps(dtype)
    return '{"dtype":%s,"shape":%s,"data_offsets":%s}' % (dt, j(shape), j(offsets))


def obj(*members) -> str:
    """JSON object text from (key, raw JSON value text) pairs; keys may repeat."""
    return "{" + ",".join(json.dumps(k) + ":" + v for k, v in members) + "}"


def valid_image() -> bytes:
    """A small valid file: three tensors (one empty), metadata, header padded with spaces."""
    header = obj(
        ("__metadata__", '{"format":"pt","note":"caf\\u00e9"}'),
        ("w", entry("F32", [2, 2], [0, 16])),
        ("b", entry("I8", [3], [16, 19])),
        ("empty", entry("F16", [0, 4], [19, 19])),
    )
    header += " " * (-len(header) % 8)
    return pack(header, bytes(range(19)))


def valid_bases() -> list[bytes]:
    """Valid images covering the header features a mutator can break."""
    one = pack(obj(("a", entry("F32", [1], [0, 4]))), b"\x00\x00\x80\x3f")
    multi = pack(
        obj(("x", entry("BF16", [2, 3], [0, 12])), ("y", entry("U8", [], [12, 13])),
            ("z", entry("I64", [1, 1, 1, 1], [13, 21])), ("e", entry("F64", [0], [21, 21]))),
        bytes(range(21)))
    only_meta = pack('{"__metadata__":{"k":"v","":""}}   ')
    return [valid_image(), one, multi, only_meta, pack("{}")]


def _single(header: str, data_len: int) -> bytes:
    return pack(header, bytes(data_len))


def bad_cases() -> list[Case]:
    cases: list[Case] = []

    def add(name: str, data: bytes) -> None:
        cases.append(Case(name, data))

    base = valid_image()

    # --- file and header length ---
    for k in range(8):
        add(f"file of {k} bytes", base[:k])
    for i in range(8, len(base)):
        add(f"file truncated to {i} bytes", base[:i])
    add("data truncated by one byte", base[:-1])
    add("one trailing byte", base + b"\x00")
    add("N=0", pack(b""))
    add("N=0 with data", pack(b"", b"{}"))
    add("N=100,000,001", pack("{}", n=100_000_001))
    add("N=100,000,000 past EOF", pack("{}", n=100_000_000))
    add("N=2^64-1", pack("{}", n=U64_MAX))
    add("N=2^63", pack("{}", n=2**63))
    add("N+8 wraps to 0", pack("{}", n=2**64 - 8))
    add("N+8 wraps to 2", pack("{}", n=2**64 - 6))
    add("N one too large", pack("{}", b"\x00", n=3))
    add("N one too small", pack('{"a":' + entry() + "}", b"\x00" * 4, n=len('{"a":' + entry() + "}") - 1))

    # --- the JSON text cut at every byte, with N fixed up to match ---
    text = obj(("__metadata__", '{"k":"v"}'), ("t", entry("F32", [2], [0, 8])))
    for i in range(len(text)):
        add(f"header JSON cut to {i} bytes", pack(text[:i], bytes(8)))

    # --- encoding ---
    for label, raw in [
        ("invalid UTF-8 0xff", b"\xff"), ("latin-1 byte 0xe9", b"caf\xe9"),
        ("overlong UTF-8", b"\xc0\xaf"), ("overlong 3-byte UTF-8", b"\xe0\x80\xaf"),
        ("UTF-8 encoded surrogate", b"\xed\xa0\x80"), ("UTF-8 above U+10FFFF", b"\xf4\x90\x80\x80"),
        ("UTF-8 lead 0xf5", b"\xf5\x80\x80\x80"), ("truncated UTF-8", b"\xe2\x82"),
        ("lone continuation byte", b"\x80"),
    ]:
        add(f"tensor name with {label}", pack(b'{"' + raw + b'":' + entry().encode() + b"}", bytes(4)))
        add(f"metadata value with {label}", pack(b'{"__metadata__":{"k":"' + raw + b'"}}'))
    add("UTF-8 BOM before header", pack(b"\xef\xbb\xbf{}"))
    add("non-UTF-8 padding after header", pack(b"{}\xff"))

    # --- header does not start with '{' ---
    for label, h in [("array", "[]"), ("string", '"x"'), ("number", "1"), ("null", "null"),
                     ("true", "true"), ("empty array of tensors", "[{}]")]:
        add(f"top-level {label}", pack(h))
    add("leading space before {", pack(" {}"))
    add("leading newline before {", pack("\n{}"))

    # --- invalid JSON ---
    for label, h in [
        ("lone {", "{"), ("unclosed object", '{"a":' + entry()), ("key without value", '{"a"}'),
        ("missing value", '{"a":}'), ("single quotes", "{'a':1}"), ("unquoted key", "{a:1}"),
        ("trailing comma in object", '{"a":' + entry() + ",}"),
        ("trailing comma in shape", '{"a":' + entry(shape="[1,]") + "}"),
        ("leading comma", "{,}"), ("double comma", '{"__metadata__":{"a":"b",,"c":"d"}}'),
        ("two objects", "{}{}"), ("NUL padding", "{}\x00"), ("garbage after", "{} x"),
        ("vertical tab padding", "{}\x0b"), ("form feed padding", "{}\x0c"),
        ("comment", "{/* c */}"), ("line comment", "{}// c"),
        ("NaN", '{"a":' + entry(shape="[NaN]") + "}"),
        ("Infinity", '{"a":' + entry(shape="[Infinity]") + "}"),
        ("hex number", '{"a":' + entry(shape="[0x1]") + "}"),
        ("plus sign", '{"a":' + entry(shape="[+1]") + "}"),
        ("leading zero", '{"a":' + entry(shape="[01]") + "}"),
        ("trailing dot", '{"a":' + entry(shape="[1.]") + "}"),
        ("leading dot", '{"a":' + entry(shape="[.5]") + "}"),
        ("bare minus", '{"a":' + entry(shape="[-]") + "}"),
        ("empty exponent", '{"a":' + entry(shape="[1e]") + "}"),
        ("unterminated string", '{"a'), ("unterminated escape", '{"a\\'),
        ("invalid escape \\x", '{"a\\x41":' + entry() + "}"),
        ("invalid escape \\U", '{"a\\U0041":' + entry() + "}"),
        ("invalid escape before non-ASCII", '{"a\\\u00e9":' + entry() + "}"),
        ("invalid escape before NUL", '{"a\\\x00":' + entry() + "}"),
        ("short \\u escape", '{"a\\u004":' + entry() + "}"),
        ("non-hex \\u escape", '{"a\\u00g1":' + entry() + "}"),
        ("lone high surrogate", '{"a\\ud800":' + entry() + "}"),
        ("lone low surrogate", '{"a\\udc00":' + entry() + "}"),
        ("high surrogate then non-surrogate", '{"a\\ud800\\u0041":' + entry() + "}"),
        ("reversed surrogate pair", '{"a\\udc00\\ud800":' + entry() + "}"),
        ("raw control char in key", '{"a\x01":' + entry() + "}"),
        ("raw newline in string", '{"__metadata__":{"k":"a\nb"}}'),
        ("raw tab in string", '{"__metadata__":{"k":"a\tb"}}'),
        ("raw NUL in string", '{"__metadata__":{"k":"a\x00b"}}'),
        ("truncated literal true", '{"__metadata__":tru}'),
        ("misspelled null", '{"__metadata__":nul}'),
        ("capitalised True", '{"__metadata__":True}'),
    ]:
        add(f"invalid JSON: {label}", _single(h, 4))

    # --- deep nesting ---
    d = 10_000
    add("10k nested arrays in shape", pack('{"a":{"dtype":"F32","shape":' + "[" * d + "]" * d + "}}"))
    add("10k nested arrays as tensor", pack('{"a":' + "[" * d + "]" * d + "}"))
    add("10k nested objects", pack('{"a":' * d + "{}" + "}" * d))
    add("10k nested objects in metadata", pack('{"__metadata__":' + '{"a":' * d + '""' + "}" * d + "}"))
    add("10k nested arrays, unclosed", pack('{"a":' + "[" * d))
    add("10k nested arrays in unknown field", pack('{"a":{"x":' + "[" * d + "]" * d + "}}"))

    # --- duplicates ---
    add("duplicate tensor key", _single(obj(("a", entry()), ("a", entry())), 4))
    add("duplicate tensor key, different entries",
        _single(obj(("a", entry("F32", [1], [0, 4])), ("a", entry("F32", [2], [0, 8]))), 8))
    add("duplicate tensor key via escape", _single('{"a":' + entry() + ',"\\u0061":' + entry() + "}", 4))
    add("duplicate __metadata__", pack('{"__metadata__":{},"__metadata__":{}}'))
    add("duplicate __metadata__ via escape", pack('{"__metadata__":{},"__metadat\\u0061__":{}}'))
    add("duplicate metadata key", pack('{"__metadata__":{"k":"1","k":"2"}}'))
    add("duplicate dtype field", _single('{"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4))
    add("duplicate shape field", _single('{"a":{"dtype":"F32","shape":[1],"shape":[1],"data_offsets":[0,4]}}', 4))
    add("duplicate data_offsets field",
        _single('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"data_offsets":[0,4]}}', 4))

    # --- metadata ---
    for label, v in [("integer", '{"k":1}'), ("null", '{"k":null}'), ("object", '{"k":{}}'),
                     ("array", '{"k":["v"]}'), ("bool", '{"k":true}'), ("float", '{"k":1.5}')]:
        add(f"metadata value is {label}", pack('{"__metadata__":' + v + "}"))
    for label, v in [("array", "[]"), ("string", '"x"'), ("number", "0"), ("null", "null"),
                     ("true", "true")]:
        add(f"__metadata__ is {label}", pack('{"__metadata__":' + v + "}"))

    # --- tensor entry structure ---
    add("tensor entry is array", _single('{"a":["F32",[1],[0,4]]}', 4))
    add("tensor entry is empty array", pack('{"a":[]}'))
    add("tensor entry is string", pack('{"a":"F32"}'))
    add("tensor entry is number", pack('{"a":4}'))
    add("tensor entry is null", pack('{"a":null}'))
    add("tensor entry is empty object", pack('{"a":{}}'))
    add("missing dtype", _single('{"a":{"shape":[1],"data_offsets":[0,4]}}', 4))
    add("missing shape", _single('{"a":{"dtype":"F32","data_offsets":[0,4]}}', 4))
    add("missing data_offsets", _single('{"a":{"dtype":"F32","shape":[1]}}', 4))
    add("unknown field in tensor", _single('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}', 4))
    add("unknown field null in tensor",
        _single('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":null}}', 4))
    add("field name with wrong case", _single('{"a":{"Dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4))
    add("old 'offsets' field name", _single('{"a":{"dtype":"F32","shape":[1],"offsets":[0,4]}}', 4))

    # --- dtype ---
    for label, dt in [("F33", "F33"), ("lower-case f32", "f32"), ("empty", ""),
                      ("float32", "float32"), ("with space", "F32 "), ("NUL inside", "F3\x002"),
                      ("integer", Raw("1")), ("null", Raw("null")), ("object", Raw('{"F32":null}')),
                      ("array", Raw('["F32"]'))]:
        add(f"dtype {label}", _single(obj(("a", entry(dt))), 4))
    # Known to newer reference versions but not to llmos.
    add("dtype F4", _single(obj(("a", entry("F4", [2], [0, 1]))), 1))
    add("dtype F6_E2M3", _single(obj(("a", entry("F6_E2M3", [4], [0, 3]))), 3))
    add("dtype F8_E8M0", _single(obj(("a", entry("F8_E8M0", [2], [0, 2]))), 2))
    add("dtype C64", _single(obj(("a", entry("C64", [1], [0, 8]))), 8))

    # --- shape ---
    for label, shape, offs, n in [
        ("negative dim", "[-1]", [0, 4], 4), ("minus zero dim", "[-0]", [0, 0], 0),
        ("float dim", "[1.0]", [0, 4], 4), ("exponent dim", "[1e0]", [0, 4], 4),
        ("fraction dim", "[0.5]", [0, 2], 2), ("string dim", '["1"]', [0, 4], 4),
        ("null dim", "[null]", [0, 4], 4), ("bool dim", "[true]", [0, 4], 4),
        ("nested dim", "[[1]]", [0, 4], 4), ("shape is integer", "1", [0, 4], 4),
        ("shape is string", '"1"', [0, 4], 4), ("shape is null", "null", [0, 4], 4),
        ("shape is object", '{"0":1}', [0, 4], 4),
        ("dim 2^64", "[18446744073709551616]", [0, 4], 4),
        ("dim 10^30", "[1000000000000000000000000000000]", [0, 4], 4),
        ("dim 2^64-1", "[18446744073709551615]", [0, 4], 4),
        ("dim 2^63 non-empty", "[9223372036854775808]", [0, 4], 4),
        # The element count is 4 mod 2^64, so a parser with wrapping arithmetic accepts these.
        ("wrapping shape, bytes wrap to 16", "[4194305,4194305,211106198978564]", [0, 16], 16),
        ("wrapping shape, spans 4 bytes", "[4194305,4194305,211106198978564]", [0, 4], 4),
        ("product overflows before a zero", "[4294967296,4294967296,0]", [0, 0], 0),
        ("shape needs 16 bytes, offsets span 12", "[2,2]", [0, 12], 12),
        ("shape needs 16 bytes, offsets span 20", "[2,2]", [0, 20], 20),
        ("0-d tensor with 0 bytes", "[]", [0, 0], 0),
        ("empty tensor with 4 bytes", "[0]", [0, 4], 4),
        # Dimensions the reference accepts because another dimension is 0, but that no array
        # library can represent (numpy: "array is too big").
        ("empty tensor with dim 2^63", "[9223372036854775808,0]", [0, 0], 0),
        ("empty tensor with dim 2^64-1", "[0,18446744073709551615]", [0, 0], 0),
        ("empty tensor with dims 2^62 x 4 bytes", "[0,4611686018427387904]", [0, 0], 0),
        ("empty tensor with dims 2^63-1", "[9223372036854775807,0]", [0, 0], 0),
    ]:
        add(label, _single(obj(("a", entry("F32", shape, offs))), n))

    # --- data_offsets ---
    for label, offs, n in [
        ("reversed offsets", "[4,0]", 4), ("negative offset", "[-4,0]", 4),
        ("negative end", "[0,-4]", 4), ("float offset", "[0,4.0]", 4),
        ("exponent offset", "[0,4e0]", 4), ("three offsets", "[0,4,4]", 4),
        ("one offset", "[0]", 4), ("no offsets", "[]", 4), ("string offsets", '["0","4"]', 4),
        ("offsets object", '{"0":0,"1":4}', 4), ("offsets null", "null", 4),
        ("offsets integer", "4", 4), ("nested offsets", "[[0],[4]]", 4),
        ("offset 2^64", "[0,18446744073709551616]", 4),
        ("offsets near 2^64", "[18446744073709551612,18446744073709551616]", 4),
        ("offsets 2^64-4..2^64-1", "[18446744073709551611,18446744073709551615]", 4),
        ("not starting at 0", "[4,8]", 8), ("past EOF", "[0,4]", 3), ("trailing bytes", "[0,4]", 5),
    ]:
        add(label, _single(obj(("a", entry("F32", [1], offs))), n))
    add("empty tensor at 2^64-1", pack(obj(("a", entry("F32", [0], [U64_MAX, U64_MAX])))))
    add("empty tensor past EOF", _single(obj(("a", entry("F32", [1], [0, 4])), ("e", entry("F32", [0], [8, 8]))), 4))
    add("gap between tensors",
        _single(obj(("a", entry("F32", [1], [0, 4])), ("b", entry("F32", [1], [8, 12]))), 12))
    add("overlapping tensors",
        _single(obj(("a", entry("F32", [1], [0, 4])), ("b", entry("F32", [1], [2, 6]))), 6))
    add("identical ranges",
        _single(obj(("a", entry("F32", [1], [0, 4])), ("b", entry("F32", [1], [0, 4]))), 4))
    add("contained range",
        _single(obj(("a", entry("F32", [2], [0, 8])), ("b", entry("I8", [2], [2, 4]))), 8))
    add("empty tensor inside another",
        _single(obj(("a", entry("F32", [1], [0, 4])), ("e", entry("F32", [0], [2, 2]))), 4))
    add("out of order with gap",
        _single(obj(("b", entry("F32", [1], [8, 12])), ("a", entry("F32", [1], [0, 4]))), 12))
    add("only empty tensors but data present", _single(obj(("e", entry("F32", [0], [0, 0]))), 1))
    add("no tensors but data present", _single("{}", 1))
    add("second tensor past EOF",
        _single(obj(("a", entry("F32", [1], [0, 4])), ("b", entry("F32", [1], [4, 8]))), 7))
    add("tensors end before data", _single(obj(("a", entry("F32", [1], [0, 4]))), 8))
    return cases


def legal_cases() -> list[Case]:
    """Unusual images that are valid safetensors: both llmos and the reference accept them."""
    cases: list[Case] = []

    def add(name: str, data: bytes) -> None:
        cases.append(Case(name, data))

    one = entry("F32", [1], [0, 4])
    data4 = b"\x00\x00\x80\x3f"
    # Tensor names are opaque keys (never used as paths); the reference accepts any string.
    for label, key in [("../x", "../x"), ("/abs/path", "/abs/path"), ("NUL inside", "a\x00b"),
                       ("empty", ""), ("emoji", "\U0001f600"), ("RTL override", "a\u202eb"),
                       ("64 KiB", "n" * 65536), ("__metadata__ prefix", "__metadata__x"),
                       ("DEL char", "a\x7f"), ("U+FFFE", "\ufffe")]:
        add(f"tensor name {label}", pack(obj((key, one)), data4))
    add("escaped tensor name", pack('{"\\u0061\\/b\\ud83d\\ude00":' + one + "}", data4))
    add("trailing spaces", pack('{"a":' + one + "}     ", data4))
    add("trailing newline, tab, CR", pack('{"a":' + one + "}\n\t\r ", data4))
    add("whitespace inside", pack('{ "a" :\n{ "dtype" : "F32" , "shape" : [ 1 ] , "data_offsets" : [ 0 , 4 ] } }', data4))
    add("fields in another order", pack('{"a":{"data_offsets":[0,4],"shape":[1],"dtype":"F32"}}', data4))
    add("metadata after tensors", pack('{"a":' + one + ',"__metadata__":{"k":"v"}}', data4))
    add("empty header object", pack("{}"))
    add("empty metadata", pack('{"__metadata__":{}}'))
    add("metadata with empty key and NUL", pack('{"__metadata__":{"":"","k":"a\\u0000b"}}'))
    add("0-d tensor", pack(obj(("s", entry("F64", [], [0, 8]))), bytes(8)))
    add("empty tensors at start, middle and end",
        pack(obj(("e0", entry("F32", [0], [0, 0])), ("a", entry("F32", [1], [0, 4])),
                 ("e1", entry("I8", [3, 0], [4, 4])), ("b", entry("I8", [2], [4, 6])),
                 ("e2", entry("F16", [0, 7], [6, 6]))), bytes(6)))
    add("two empty tensors at the same offset",
        pack(obj(("e0", entry("F32", [0], [0, 0])), ("e1", entry("F32", [0], [0, 0]))), b""))
    add("empty tensor with large dims", pack(obj(("e", entry("F32", [0, 1 << 40, 1 << 20], [0, 0])))))
    add("tensors out of order",
        pack(obj(("b", entry("I8", [2], [4, 6])), ("a", entry("F32", [1], [0, 4]))), bytes(6)))
    add("unaligned tensor", pack(obj(("a", entry("I8", [3], [0, 3])), ("b", entry("F64", [1], [3, 11]))), bytes(11)))
    add("integer 0 with many zeros dims", pack(obj(("e", entry("U8", [0] * 64, [0, 0])))))
    add("valid image", valid_image())
    return cases


def reference_serialize(tensors: dict, metadata: dict | None = None) -> bytes:
    """Serialize {name: (header dtype, shape, raw bytes)} with the reference library's raw
    API, so dtypes numpy lacks (BF16, FP8) can be written too."""
    import numpy as np
    import safetensors

    keep = []
    spec_type = getattr(safetensors, "TensorSpec", None)
    specs = {}
    for name, (dtype, shape, raw) in tensors.items():
        ref_dtype = REFERENCE_DTYPE_NAMES[dtype]
        if spec_type is not None:  # safetensors >= 0.8: raw pointers
            buf = np.frombuffer(raw, dtype=np.uint8).copy() if raw else np.zeros(1, np.uint8)
            keep.append(buf)
            specs[name] = spec_type(dtype=ref_dtype, shape=list(shape),
                                    data_ptr=buf.ctypes.data, data_len=len(raw))
        else:  # older releases take a dict with the bytes
            specs[name] = {"dtype": ref_dtype, "shape": list(shape), "data": raw}
    out = bytes(safetensors.serialize(specs, metadata=metadata))
    del keep
    return out
