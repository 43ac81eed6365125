"""reconcile.gguf against files written by llama.cpp's own Python package (``gguf``, the
writer convert_hf_to_gguf.py uses) and read back by its reader; broken files must give
FormatError, never another exception, and never a read larger than the limits allow."""

from __future__ import annotations

import io
import struct
import tempfile
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconcile.errors import FormatError, ReconcileError
from reconcile.gguf import FILE_TYPES, Limits, Skipped, parse_gguf, read_gguf

VT = gguf.GGUFValueType
INTS = {VT.UINT8: (0, 2**8 - 1), VT.INT8: (-(2**7), 2**7 - 1), VT.UINT16: (0, 2**16 - 1),
        VT.INT16: (-(2**15), 2**15 - 1), VT.UINT32: (0, 2**32 - 1),
        VT.INT32: (-(2**31), 2**31 - 1), VT.UINT64: (0, 2**64 - 1),
        VT.INT64: (-(2**63), 2**63 - 1)}
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
KEYS = st.from_regex(r"[a-z][a-z0-9_]{0,8}(\.[a-z0-9_]{1,8}){0,3}", fullmatch=True).filter(
    lambda k: k != "general.architecture")


def scalar(vtype: VT) -> st.SearchStrategy:
    if vtype in INTS:
        return st.integers(*INTS[vtype])
    if vtype == VT.FLOAT32:  # f32 values survive the round trip exactly
        return st.floats(width=32, allow_nan=False)
    if vtype == VT.FLOAT64:
        return st.floats(allow_nan=False)
    if vtype == VT.BOOL:
        return st.booleans()
    return TEXT


ELEMENT_TYPES = [*INTS, VT.FLOAT32, VT.FLOAT64, VT.BOOL, VT.STRING]


@st.composite
def kv(draw) -> tuple[VT, VT | None, object]:
    """(type, element type, value): scalars, strings, arrays, arrays of int arrays."""
    kind = draw(st.sampled_from([*ELEMENT_TYPES, VT.ARRAY, "nested"]))
    if kind == "nested":
        inner = st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=4)
        return VT.ARRAY, VT.ARRAY, draw(st.lists(inner, min_size=1, max_size=4))
    if kind == VT.ARRAY:
        etype = draw(st.sampled_from(ELEMENT_TYPES))
        return VT.ARRAY, etype, draw(st.lists(scalar(etype), min_size=1, max_size=30))
    return kind, None, draw(scalar(kind))


SHAPES = st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=4), max_size=5)


def write(path: Path, arch: str, kvs: dict, shapes: list, big: bool = False) -> None:
    """A GGUF header as llama.cpp's converters write one (tensor data left out)."""
    w = gguf.GGUFWriter(path, arch, endianess=gguf.GGUFEndian.BIG if big else
                        gguf.GGUFEndian.LITTLE)
    for key, (vtype, etype, value) in kvs.items():
        w.add_key_value(key, value, vtype, sub_type=etype if etype != VT.ARRAY else None)
    for i, shape in enumerate(shapes):
        w.add_tensor_info(f"t{i}", shape, np.dtype(np.float32), 4 * int(np.prod(shape)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()


def header_bytes(arch="llama", kvs=None, shapes=((4, 2),), big=False) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        write(Path(d) / "m.gguf", arch, kvs or {}, [list(s) for s in shapes], big)
        return (Path(d) / "m.gguf").read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, kv(), max_size=8), SHAPES, TEXT.filter(bool), st.booleans())
def test_metadata_round_trips_through_llama_cpps_writer(kvs, shapes, arch, big):
    data = header_bytes(arch, kvs, shapes, big)
    h = parse_gguf(io.BytesIO(data), "m.gguf")
    assert h.version == 3 and h.byte_order == (">" if big else "<")
    assert h.architecture == arch and h.tensor_count == len(shapes)
    assert h.parameter_count == sum(int(np.prod(s)) for s in shapes)
    assert h.size == len(data)  # the whole header, and nothing past it
    assert h.metadata == {"general.architecture": arch, **{k: v for k, (_, _, v) in kvs.items()}}


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 40), st.lists(TEXT, min_size=1, max_size=60), st.integers(0, 20))
def test_long_arrays_are_walked_not_kept(file_type, tokens, keep):
    data = header_bytes(kvs={"general.file_type": (VT.UINT32, None, file_type),
                             "tokenizer.ggml.tokens": (VT.ARRAY, VT.STRING, tokens)})
    h = parse_gguf(io.BytesIO(data), "m.gguf", Limits(keep_array=keep))
    got = h.metadata["tokenizer.ggml.tokens"]
    assert got == (tokens if len(tokens) <= keep else Skipped(int(VT.STRING), len(tokens)))
    assert h.file_type == file_type and h.size == len(data)


JINJA = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"


def make_gguf(path: Path, arch="qwen2", ftype=15, template: str | None = JINJA,
              vocab: int = 0, rows: int = 64) -> Path:
    """A small GGUF as llama.cpp's converters write one, tensor data included."""
    w = gguf.GGUFWriter(path, arch)
    w.add_name("Tiny")
    w.add_file_type(ftype)
    w.add_license("apache-2.0")
    if template:
        w.add_chat_template(template)
    if vocab:
        w.add_token_list([f"tok{i}" for i in range(vocab)])
        w.add_token_scores([0.5] * vocab)
    w.add_tensor("token_embd.weight", np.zeros((rows, 8), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_what_the_ollama_config_needs_agrees_with_llama_cpps_reader(tmp_path):
    make_gguf(tmp_path / "m.gguf", vocab=10_000, rows=200)
    h = read_gguf(tmp_path / "m.gguf")
    ref = gguf.GGUFReader(tmp_path / "m.gguf")
    assert (h.architecture, h.name, h.license) == ("qwen2", "Tiny", "apache-2.0")
    assert (h.file_type, h.quantization) == (15, "Q4_K_M")
    assert h.chat_template == JINJA
    assert h.parameter_count == sum(int(t.n_elements) for t in ref.tensors) == 1608
    assert h.metadata["tokenizer.ggml.tokens"] == Skipped(8, 10_000)
    assert h.size <= ref.data_offset  # the descriptors end where the padding starts


def test_quantization_names_are_llama_cpps():
    for ftype in gguf.LlamaFileType:
        if ftype.value in FILE_TYPES:
            assert ftype.name.removeprefix("MOSTLY_").removeprefix("ALL_") == FILE_TYPES[ftype]
    assert {t.value for t in gguf.LlamaFileType} - {1024} == set(FILE_TYPES)


class Recording(io.BytesIO):
    """Every read request's size: what a stream would have had to allocate."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[int] = []

    def read(self, n=-1):
        self.asked.append(n)
        return super().read(n)


BOUNDS = Limits(max_bytes=1 << 16, keep_string=1 << 10, keep_array=64)


def bounded_parse(data: bytes) -> None:
    """Parse or FormatError, with every read small and the total within the budget."""
    stream = Recording(data)
    try:
        parse_gguf(stream, "evil.gguf", BOUNDS)
    except FormatError as e:
        assert str(e).startswith("evil.gguf (byte ")
    assert all(0 <= n <= max(BOUNDS.keep_string, BOUNDS.keep_array * 8, 1 << 16)
               for n in stream.asked)
    assert sum(stream.asked) <= BOUNDS.max_bytes + 8


SAMPLE = header_bytes(kvs={"general.name": (VT.STRING, None, "x" * 50),
                           "a.list": (VT.ARRAY, VT.UINT32, list(range(40))),
                           "a.nest": (VT.ARRAY, VT.ARRAY, [[1, 2], [3]]),
                           "tokenizer.chat_template": (VT.STRING, None, "{{ x }}")},
                      shapes=((3, 4), (5,)))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(SAMPLE) - 1))
def test_every_truncation_is_a_format_error(cut):
    with pytest.raises(FormatError, match=r"truncated|ends inside"):
        parse_gguf(io.BytesIO(SAMPLE[:cut]), "cut.gguf")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(SAMPLE) - 1), st.integers(0, 255)),
                min_size=1, max_size=6))
def test_garbled_headers_parse_or_fail_cleanly_within_bounds(edits):
    data = bytearray(SAMPLE)
    for pos, byte in edits:
        data[pos] = byte
    bounded_parse(bytes(data))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_after_the_magic_never_crash(tail):
    bounded_parse(b"GGUF" + struct.pack("<I", 3) + tail)


def le(*parts) -> bytes:
    out = b""
    for fmt, value in parts:
        out += struct.pack("<" + fmt, value) if fmt != "s" else value
    return out


HEAD = b"GGUF" + struct.pack("<IQ", 3, 0)


@pytest.mark.parametrize("data,why", [
    (b"PK\x03\x04" + b"\0" * 20, "not a GGUF file"),
    (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "version 1"),
    (b"GGUF" + struct.pack("<IQQ", 7, 0, 0), "unsupported GGUF version 7"),
    (b"GGUF" + struct.pack("<IQQ", 3, 2**63, 0), "tensor count"),
    (HEAD + le(("Q", 2**64 - 1)), "key/value count"),
    (HEAD + le(("Q", 1), ("Q", 1), ("s", b"k"), ("I", 8), ("Q", 2**62)), "length of 'k'"),
    (HEAD + le(("Q", 1), ("Q", 1), ("s", b"k"), ("I", 9), ("I", 4), ("Q", 2**40)),
     "length of 'k'"),
    (HEAD + le(("Q", 1), ("Q", 1), ("s", b"k"), ("I", 13)), "unknown value type 13"),
    (HEAD + le(("Q", 1), ("Q", 1), ("s", b"k"), ("I", 9), ("I", 42), ("Q", 1)),
     "unknown array element type 42"),
    (HEAD + le(("Q", 2), ("Q", 1), ("s", b"k"), ("I", 7), ("s", b"\1"), ("Q", 1), ("s", b"k"),
               ("I", 7), ("s", b"\0")), "duplicate key 'k'"),
    (HEAD + le(("Q", 1), ("Q", 2), ("s", b"\xff\xfe")), "key 0 is not UTF-8"),
    (HEAD + le(("Q", 1), ("Q", 1), ("s", b"k"), ("I", 9), *[("I", 9), ("Q", 1)] * 3,
               ("I", 9), ("Q", 1)), "nested deeper"),
])
def test_broken_headers_say_what_is_wrong(data, why):
    with pytest.raises(FormatError, match=why) as e:
        parse_gguf(io.BytesIO(data), "models/x.gguf")
    assert isinstance(e.value, ReconcileError) and str(e.value).startswith("models/x.gguf")


def test_too_many_tensor_dimensions_and_a_budget_past_the_file(tmp_path):
    one_tensor = b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + le(("Q", 1), ("s", b"w"), ("I", 9))
    with pytest.raises(FormatError, match="9 dimensions"):
        parse_gguf(io.BytesIO(one_tensor), "t.gguf")
    with pytest.raises(FormatError, match="past 64 bytes"):
        parse_gguf(io.BytesIO(SAMPLE), "t.gguf", Limits(max_bytes=64))
    with pytest.raises(FormatError, match="cannot be read"):
        read_gguf(tmp_path / "absent.gguf")


def test_the_header_of_a_stream_is_read_without_the_tensor_data():
    data = header_bytes(shapes=((1000, 1000),)) + b"\x7f" * 4_000_000
    stream = Recording(data)
    h = parse_gguf(stream, "big.gguf")
    assert h.parameter_count == 1_000_000 and sum(stream.asked) == h.size < 1000
