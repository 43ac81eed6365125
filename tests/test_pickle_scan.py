"""The scanner against every technique of shared/notes/security.md §5 and benign files.

Payloads are harmless (`os.getcwd`, pickled as `posix getcwd`) and never executed here.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconcile.validation.formats import sniff
from reconcile.validation.pickle_scan import scan_bytes, scan_file, scan_tree

GETCWD0 = b"cposix\ngetcwd\n(tR."  # protocol 0: GLOBAL + MARK + TUPLE + REDUCE


def su(s: str) -> bytes:  # SHORT_BINUNICODE
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


class Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def critical(findings, name: str = "posix.getcwd") -> bool:
    return any(f.severity == "critical" and f.global_name == name for f in findings)


def blocking(findings) -> bool:
    return any(f.severity in ("critical", "unknown", "error") for f in findings)


def write(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


def torch_zip(tmp: Path, members: dict[str, bytes], name: str = "model.pt", prefix: bytes = b""
              ) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, d in members.items():
            z.writestr(n, d)
    return write(tmp, name, prefix + buf.getvalue())


BENIGN_TORCH_PKL = (
    b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x06\x00\x00\x00weightq\x02ctorch._utils\n"
    b"_rebuild_tensor_v2\nq\x03((X\x07\x00\x00\x00storageq\x04ctorch\nFloatStorage\nq\x05X\x01"
    b"\x00\x00\x000q\x06X\x03\x00\x00\x00cpuq\x07K\x04tq\x08QK\x00K\x04\x85q\tK\x01\x85q\n\x89h"
    b"\x00)Rq\x0btq\x0cRq\rs."
)


# --- the numbered rows of the notes' table ---------------------------------------------

def test_row1_protocol0_global_reduce(tmp_path):
    assert critical(scan_file(write(tmp_path, "a.pkl", GETCWD0)))


def test_row2_stack_global_through_the_memo():
    data = (b"\x80\x04" + su("os") + b"q\x000" + b"h\x00q\x020" + b"h\x02" + su("getcwd")
            + b"\x93)R.")
    f = scan_bytes(data)
    assert critical(f, "os.getcwd"), f


def test_row3_stack_global_from_short_binstring():
    data = b"\x80\x04U\x02osU\x06getcwd\x93)R."
    assert critical(scan_bytes(data), "os.getcwd")


def test_row4_module_computed_by_reduce_is_unresolved():
    data = (b"\x80\x04" + su("builtins") + su("str") + b"\x93" + b"C\x02os" + su("ascii")
            + b"\x86R" + su("getcwd") + b"\x93)R.")
    f = scan_bytes(data)
    assert any(x.severity == "critical" and "cannot resolve" in x.reason for x in f), f


def test_row5_inst():
    assert critical(scan_bytes(b"(iposix\ngetcwd\n."))


def test_row6_benign_then_malicious_pickle(tmp_path):
    data = pickle.dumps({"a": 1}, protocol=4) + pickle.dumps(Evil(), protocol=4)
    assert critical(scan_file(write(tmp_path, "two.pkl", data)))


def test_row7_payload_then_garbage_without_stop():
    f = scan_bytes(b"\x80\x02cposix\ngetcwd\n)R\xff\xfe\xfd")
    assert critical(f) and any(x.severity == "error" for x in f)


def test_row7b_complete_payload_then_garbage():
    f = scan_bytes(pickle.dumps(Evil(), protocol=2) + b"\xff\x00garbage")
    assert critical(f)


def test_row8_dotted_name_under_proto4():
    data = b"\x80\x04" + su("pathlib") + su("os.getcwd") + b"\x93)R."
    f = scan_bytes(data)
    assert any(x.severity == "critical" and x.global_name == "pathlib.os.getcwd" for x in f)


def test_row9_ext1():
    f = scan_bytes(b"\x80\x02\x82\x01)R.")
    assert any(x.severity == "critical" and x.global_name.startswith("EXT1") for x in f)


def test_row10_protocol0_named_bin(tmp_path):
    p = write(tmp_path, "weights.bin", GETCWD0)
    assert sniff(p) == "pickle" and critical(scan_file(p))


def test_row11_protocol2_named_txt_found_in_a_directory_walk(tmp_path):
    write(tmp_path, "notes.txt", pickle.dumps(Evil(), protocol=2))
    assert critical(scan_tree(tmp_path))


def test_row12_npy_with_object_dtype_in_a_directory_walk(tmp_path):
    np.save(tmp_path / "arr.npy", np.array([Evil()], dtype=object), allow_pickle=True)
    assert critical(scan_tree(tmp_path))


def test_row13_npz_with_an_object_member(tmp_path):
    np.savez(tmp_path / "a.npz", ok=np.zeros(3), bad=np.array([Evil()], dtype=object))
    assert critical(scan_file(tmp_path / "a.npz"))


def test_row14_torch_zip_malicious_data_pkl(tmp_path):
    p = torch_zip(tmp_path, {"archive/data.pkl": pickle.dumps(Evil(), protocol=2),
                             "archive/version": b"3\n"})
    f = scan_file(p)
    assert critical(f) and f[0].member == "archive/data.pkl"


def test_row15_protocol0_pickle_hidden_as_a_storage_member(tmp_path):
    p = torch_zip(tmp_path, {"archive/data.pkl": BENIGN_TORCH_PKL, "archive/data/0": GETCWD0})
    f = scan_file(p)
    assert critical(f) and any(x.member == "archive/data/0" for x in f)


def test_row16_zip_with_bytes_prepended(tmp_path):
    p = torch_zip(tmp_path, {"archive/data.pkl": pickle.dumps(Evil(), protocol=2)},
                  prefix=os.urandom(64))
    assert sniff(p) == "zip" and critical(scan_file(p))


def test_row17_zip_with_a_wrong_crc(tmp_path):
    p = torch_zip(tmp_path, {"archive/data.pkl": pickle.dumps(Evil(), protocol=2)})
    data = bytearray(p.read_bytes())
    crc = struct.pack("<I", zlib.crc32(pickle.dumps(Evil(), protocol=2)))
    i = data.find(crc)
    while i >= 0:  # corrupt the CRC in the local header and the central directory
        data[i] ^= 0xFF
        i = data.find(crc, i + 1)
    p.write_bytes(bytes(data))
    f = scan_file(p)
    assert critical(f) and any("unreadable member" in x.reason or "CRC" in x.reason for x in f)


def test_row18_legacy_torch_payload_in_a_later_pickle(tmp_path):
    data = (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
            + pickle.dumps({"protocol_version": 1001}, protocol=2)
            + pickle.dumps(Evil(), protocol=2) + pickle.dumps(["0"], protocol=2) + os.urandom(64))
    assert critical(scan_file(write(tmp_path, "legacy.pt", data)))


def test_row19_joblib_payload_after_an_array(tmp_path):
    joblib = pytest.importorskip("joblib")
    joblib.dump([np.zeros(4, np.float32), Evil()], tmp_path / "m.joblib")
    f = scan_file(tmp_path / "m.joblib")
    assert critical(f), f


def test_joblib_compressed_dump(tmp_path):
    joblib = pytest.importorskip("joblib")
    joblib.dump([np.arange(10), Evil()], tmp_path / "m.joblib.z", compress=3)
    assert critical(scan_file(tmp_path / "m.joblib.z"))


CALLABLES = [
    ("functools", "partial"), ("operator", "methodcaller"), ("timeit", "timeit"),
    ("cProfile", "run"), ("ctypes", "CDLL"), ("pydoc", "locate"), ("pkgutil", "resolve_name"),
    ("asyncio.subprocess", "create_subprocess_exec"), ("pip._internal", "main"),
    ("builtins", "__import__"), ("importlib", "import_module"), ("code", "InteractiveInterpreter"),
    ("_posixsubprocess", "fork_exec"), ("numpy", "load"), ("numpy.lib.format", "read_array"),
    ("marshal", "loads"), ("types", "FunctionType"), ("torch", "load"), ("builtins", "setattr"),
    ("builtins", "vars"), ("zipimport", "zipimporter"), ("multiprocessing.util", "spawnv_passfds"),
    ("io", "open"), ("tempfile", "mkdtemp"), ("glob", "glob"), ("sysconfig", "_main"),
    ("builtins", "eval"), ("builtins", "getattr"), ("subprocess", "Popen"), ("runpy", "run_path"),
    ("torch.utils.collect_env", "run"), ("mailcap", "findmatch"), ("logging", "FileHandler"),
    ("_operator", "attrgetter"), ("pandas.io.parsers.readers", "read_csv"),
]


@pytest.mark.parametrize("module,name", CALLABLES)
def test_rows21_46_each_callable_is_blocked(module, name):
    data = b"\x80\x04" + su(module) + su(name) + b"\x93)R."
    f = scan_bytes(data)
    assert blocking(f) and any(x.global_name == f"{module}.{name}" for x in f), f
    assert any(x.severity == "critical" for x in f), f


def test_python2_names_are_normalised():
    f = scan_bytes(b"c__builtin__\neval\n(S'1'\ntR.")
    assert critical(f, "builtins.eval")


def test_findings_carry_file_member_offset_and_global(tmp_path):
    p = torch_zip(tmp_path, {"m/data.pkl": b"\x80\x02cposix\ngetcwd\n)R."})
    (f,) = [x for x in scan_file(p) if x.severity == "critical"]
    assert (f.file, f.member, f.offset, f.global_name) == ("model.pt", "m/data.pkl", 2,
                                                           "posix.getcwd")


# --- benign controls: no false alarms --------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_numpy_pickles_are_clean(protocol):
    obj = {"a": np.arange(5, dtype=np.float32), "s": np.float64(3.5), "b": b"bytes",
           "set": {1, 2}, "c": 1 + 2j, "sl": slice(1, 2), "ba": bytearray(b"x")}
    from collections import OrderedDict

    obj["od"] = OrderedDict(x=1)
    assert scan_bytes(pickle.dumps(obj, protocol=protocol)) == []


def test_plain_npy_npz_and_safetensors_are_clean(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((3, 3)))
    np.savez_compressed(tmp_path / "b.npz", x=np.ones(4), y=np.arange(3))
    from safetensors.numpy import save_file

    save_file({"w": np.ones((2, 2), np.float32)}, str(tmp_path / "m.safetensors"))
    assert scan_tree(tmp_path) == []


def test_torch_layout_zip_with_rebuild_and_persistent_ids_is_clean(tmp_path):
    p = torch_zip(tmp_path, {"archive/data.pkl": BENIGN_TORCH_PKL, "archive/data/0": b"\0" * 16,
                             "archive/version": b"3\n", "archive/byteorder": b"little"})
    assert scan_file(p) == []


def test_real_torch_checkpoint_is_clean(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.ones(3, 3), "b": torch.zeros(2, dtype=torch.bfloat16)},
               tmp_path / "sd.pt")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "linear.bin")
    assert [f for f in scan_tree(tmp_path) if f.severity != "warning"] == []


def test_joblib_numpy_dump_is_clean(tmp_path):
    joblib = pytest.importorskip("joblib")
    joblib.dump({"a": np.zeros((3, 4), np.float32), "b": np.arange(7)}, tmp_path / "d.joblib")
    assert scan_file(tmp_path / "d.joblib") == []


def test_a_huge_non_pickle_file_is_sniffed_not_read(tmp_path):
    p = tmp_path / "big.bin"
    with open(p, "wb") as f:
        f.write(b"\x00\x01junk")
        f.truncate(8 << 30)  # sparse 8 GiB
    import time

    t = time.monotonic()
    assert scan_file(p) == []
    assert time.monotonic() - t < 2


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_never_raises_on_arbitrary_bytes(data):
    for f in scan_bytes(data):
        assert f.severity in ("critical", "unknown", "error", "warning")


plain = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                     | st.text() | st.binary(),
                     lambda c: st.lists(c) | st.dictionaries(st.text(), c) | st.tuples(c, c),
                     max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(plain, st.integers(0, 5))
def test_plain_data_pickles_have_no_findings(obj, protocol):
    assert [f for f in scan_bytes(pickle.dumps(obj, protocol=protocol))] == []


def test_real_torch_checkpoints_with_payloads_are_caught(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.ones(2), "x": Evil()}, tmp_path / "evil.pt")
    assert critical(scan_file(tmp_path / "evil.pt"))
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "module.pt")
    f = scan_file(tmp_path / "module.pt")  # a whole pickled module: arbitrary classes
    assert any(x.severity == "unknown" and x.global_name.startswith("torch.nn.modules") for x in f)
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert [x for x in scan_file(tmp_path / "legacy.pt") if x.severity != "warning"] == []


def test_random_weights_are_not_mistaken_for_pickles(tmp_path):
    import random

    rnd = random.Random(7)
    flagged = 0
    for i in range(3000):
        data = rnd.randbytes(rnd.randint(16, 2048))
        if data[:1] == b"\x80":
            continue  # a protocol header is a real claim to be a pickle
        p = tmp_path / f"{i}.bin"
        p.write_bytes(data)
        flagged += bool(scan_file(p))
        p.unlink()
    assert flagged == 0
