"""The scanner against every technique of shared/notes/security.md (§1.2-1.6, §3, §5).

Payloads are harmless (``os.getcwd``, which pickles as ``posix getcwd``) and are never
loaded here: samples are hand-assembled opcodes or ``pickle.dumps`` of a ``__reduce__``.
Each test names the row or section of the notes it reproduces.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import tarfile
import tempfile
import time
import tracemalloc
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconcile.validation.kinds import sniff
from reconcile.validation.pickle_scan import (
    Finding,
    classify,
    contains_pickle,
    scan_bytes,
    scan_file,
    scan_tree,
)

GETCWD0 = b"cposix\ngetcwd\n(tR."  # protocol 0: GLOBAL, MARK, TUPLE, REDUCE, STOP
BLOCKING = ("critical", "unknown", "error")


def su(s: str) -> bytes:  # SHORT_BINUNICODE
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def sg(module: str, name: str, proto: int = 4) -> bytes:
    """PROTO, two strings, STACK_GLOBAL, empty args, REDUCE, STOP."""
    return bytes([0x80, proto]) + su(module) + su(name) + b"\x93)R."


class Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def hit(
    findings: list[Finding],
    name: str = "posix.getcwd",
    offset: int | None = None,
    severity: str = "critical",
) -> bool:
    return any(
        f.severity == severity and f.global_name == name and (offset is None or f.offset == offset)
        for f in findings
    )


def blocking(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity in BLOCKING]


def write(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


def zip_bytes(
    members: dict[str, bytes] | list[tuple[str, bytes]], method: int = zipfile.ZIP_STORED
) -> bytes:
    buf = io.BytesIO()
    items = members.items() if isinstance(members, dict) else members
    with zipfile.ZipFile(buf, "w", method) as z:
        for n, d in items:
            z.writestr(n, d)
    return buf.getvalue()


EVIL2 = pickle.dumps(Evil(), protocol=2)  # b"\x80\x02cposix\ngetcwd\nq\x00)Rq\x01."
EVIL_AT = EVIL2.index(b"cposix")
BENIGN_TORCH_PKL = (  # torch.save's data.pkl layout (notes §2.4), GLOBAL + BINPERSID
    b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x06\x00\x00\x00weightq\x02ctorch._utils\n"
    b"_rebuild_tensor_v2\nq\x03((X\x07\x00\x00\x00storageq\x04ctorch\nFloatStorage\nq\x05X\x01"
    b"\x00\x00\x000q\x06X\x03\x00\x00\x00cpuq\x07K\x04tq\x08QK\x00K\x04\x85q\tK\x01\x85q\n\x89h"
    b"\x00)Rq\x0btq\x0cRq\rs."
)


# --- §5 rows 1-19 ---------------------------------------------------------------------


def test_row1_protocol0_global_reduce(tmp_path):
    assert hit(scan_file(write(tmp_path, "a.pkl", GETCWD0)), offset=0)


def test_row2_stack_global_through_the_memo():
    # 'os' BINPUT 0 POP; BINGET 0 BINPUT 2 POP; BINGET 2 'getcwd' STACK_GLOBAL ) REDUCE
    data = b"\x80\x04" + su("os") + b"q\x000" + b"h\x00q\x020" + b"h\x02" + su("getcwd")
    data += b"\x93)R."
    assert hit(scan_bytes(data), "os.getcwd", data.index(b"\x93"))


def test_row3_stack_global_operands_from_short_binstring():
    data = b"\x80\x04U\x02osU\x06getcwd\x93)R."
    assert hit(scan_bytes(data), "os.getcwd", data.index(b"\x93"))


def test_row4_module_computed_by_reduce_is_unresolved():
    # builtins.str(b'os', 'ascii') -> STACK_GLOBAL(<computed>, 'getcwd')
    data = b"\x80\x04" + su("builtins") + su("str") + b"\x93C\x02os" + su("ascii") + b"\x86R"
    data += su("getcwd") + b"\x93)R."
    f = scan_bytes(data)
    assert hit(f, "builtins.str", data.index(b"\x93"))
    second = data.rindex(b"\x93")
    assert hit(f, "<unresolved>.getcwd", second), f
    assert "cannot resolve" in next(x.reason for x in f if x.offset == second)


def test_row5_inst():
    data = b"(iposix\ngetcwd\n."
    assert hit(scan_bytes(data), offset=1)


def test_row6_benign_then_malicious_pickle(tmp_path):
    first = pickle.dumps({"a": 1}, protocol=4)
    p = write(tmp_path, "two.pkl", first + EVIL2)
    assert hit(scan_file(p), offset=len(first) + EVIL_AT)


def test_row7_payload_then_garbage_without_stop():
    data = b"\x80\x02cposix\ngetcwd\n)R\xff\xfe\xfd"
    f = scan_bytes(data)
    assert hit(f, offset=2)
    assert hit(f, "-", data.index(b"\xff"), "error"), f  # unparseable, and it acted first


def test_row7b_complete_payload_then_garbage():
    f = scan_bytes(EVIL2 + b"\xff\x00garbage")
    assert hit(f, offset=EVIL_AT)
    assert hit(f, "-", len(EVIL2), "warning")  # the tail itself imports nothing


def test_row8_dotted_name_under_proto4():
    f = scan_bytes(sg("pathlib", "os.getcwd"))
    assert hit(f, "pathlib.os.getcwd", 22)
    assert "dotted" in f[0].reason
    assert hit(
        scan_bytes(sg("collections", "_sys.getrecursionlimit")),
        "collections._sys.getrecursionlimit",
    )


@pytest.mark.parametrize(
    "ext,label",
    [(b"\x82\x01", "EXT1 1"), (b"\x83\x01\x02", "EXT2 513"), (b"\x84\x01\x00\x00\x00", "EXT4 1")],
)
def test_row9_ext_codes(ext, label, tmp_path):
    data = b"\x80\x02" + ext + b")R."
    assert hit(scan_bytes(data), label, 2)
    assert hit(scan_file(write(tmp_path, "e.bin", data)), label, 2)  # sniffed as a pickle


def test_row10_protocol0_pickle_named_bin(tmp_path):
    p = write(tmp_path, "weights.bin", GETCWD0)
    assert sniff(p) == "pickle" and hit(scan_file(p), offset=0)


def test_row11_protocol2_pickle_named_txt_found_by_a_directory_walk(tmp_path):
    write(tmp_path, "notes.txt", EVIL2)
    f = scan_tree(tmp_path)
    assert hit(f, offset=EVIL_AT) and f[0].file == "notes.txt"


def test_row12_npy_with_object_dtype_in_a_directory_walk(tmp_path):
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "sub" / "arr.npy", np.array([Evil()], dtype=object), allow_pickle=True)
    f = scan_tree(tmp_path)
    data = (tmp_path / "sub" / "arr.npy").read_bytes()
    assert hit(f, offset=data.index(b"getcwd\x94\x93") + 7)  # the STACK_GLOBAL byte
    assert f[0].file == "sub/arr.npy"


def test_row13_npz_with_an_object_member(tmp_path):
    np.savez(tmp_path / "a.npz", ok=np.zeros(3), bad=np.array([Evil()], dtype=object))
    f = scan_file(tmp_path / "a.npz")
    assert hit(f) and {x.member for x in f} == {"bad.npy"}


def test_row14_torch_zip_with_a_malicious_data_pkl(tmp_path):
    p = write(
        tmp_path, "model.pt", zip_bytes({"archive/data.pkl": EVIL2, "archive/version": b"3\n"})
    )
    f = scan_file(p)
    assert hit(f, offset=EVIL_AT) and f[0].member == "archive/data.pkl"


def test_row15_protocol0_pickle_hidden_as_a_storage_member(tmp_path):
    p = write(
        tmp_path,
        "model.pt",
        zip_bytes({"archive/data.pkl": BENIGN_TORCH_PKL, "archive/data/0": GETCWD0}),
    )
    f = scan_file(p)
    assert hit(f, offset=0) and [x.member for x in f] == ["archive/data/0"]


def test_row16_zip_with_bytes_prepended(tmp_path):
    p = write(tmp_path, "model.pt", os.urandom(64) + zip_bytes({"archive/data.pkl": EVIL2}))
    assert sniff(p) == "zip" and hit(scan_file(p), offset=EVIL_AT)


def test_row17_zip_with_a_wrong_crc(tmp_path):
    data = bytearray(zip_bytes({"archive/data.pkl": EVIL2}))
    crc = struct.pack("<I", zlib.crc32(EVIL2))
    i = data.find(crc)
    while i >= 0:  # corrupt the CRC in the local header and the central directory
        data[i] ^= 0xFF
        i = data.find(crc, i + 1)
    f = scan_file(write(tmp_path, "model.pt", bytes(data)))
    assert hit(f, offset=EVIL_AT)
    assert any(x.severity == "error" and "CRC-32 mismatch" in x.reason for x in f), f


LEGACY_HEAD = (
    pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    + pickle.dumps(1001, protocol=2)
    + pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
)


def test_row18_legacy_torch_payload_in_the_object_pickle(tmp_path):
    data = LEGACY_HEAD + EVIL2 + pickle.dumps([], protocol=2)
    f = scan_file(write(tmp_path, "legacy.pt", data))
    assert hit(f, offset=len(LEGACY_HEAD) + EVIL_AT) and not blocking(f)[1:], f


def test_row19_joblib_payload_after_an_array(tmp_path):
    joblib = pytest.importorskip("joblib")
    joblib.dump([np.zeros(4, np.float32), Evil()], tmp_path / "m.joblib")
    f = scan_file(tmp_path / "m.joblib")
    assert [(x.global_name, x.severity) for x in f] == [("posix.getcwd", "critical")]


# --- §5 rows 21-46 and §2.1: one STACK_GLOBAL + REDUCE per callable -----------------------

CALLABLES = [
    # rows 21-46 (picklescan 1.0.5 caught 9, modelscan 0.8.8 caught 1)
    ("functools", "partial"), ("operator", "methodcaller"), ("timeit", "timeit"),
    ("cProfile", "run"), ("ctypes", "CDLL"), ("pydoc", "locate"), ("pkgutil", "resolve_name"),
    ("asyncio.subprocess", "create_subprocess_exec"), ("pip._internal", "main"),
    ("builtins", "__import__"), ("importlib", "import_module"),
    ("code", "InteractiveInterpreter"), ("_posixsubprocess", "fork_exec"), ("numpy", "load"),
    ("numpy.lib.format", "read_array"), ("marshal", "loads"), ("types", "FunctionType"),
    ("torch", "load"), ("builtins", "setattr"), ("builtins", "vars"),
    ("zipimport", "zipimporter"), ("multiprocessing.util", "spawnv_passfds"), ("io", "open"),
    ("tempfile", "mkdtemp"), ("glob", "glob"), ("sysconfig", "_main"),
    # §2.1 advisories and the obvious ones
    ("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"), ("builtins", "open"),
    ("builtins", "compile"), ("builtins", "breakpoint"), ("os", "system"), ("posix", "system"),
    ("nt", "system"), ("subprocess", "Popen"), ("runpy", "run_path"), ("pty", "spawn"),
    ("torch.utils.collect_env", "run"), ("mailcap", "findmatch"), ("logging", "FileHandler"),
    ("_operator", "attrgetter"), ("operator", "itemgetter"), ("pandas.io.parsers.readers", "read_csv"),
    ("mlflow.projects.backend.local", "_run_entry_point"), ("ensurepip", "_run_pip"),
    ("pip", "main"), ("venv", "create"), ("asyncio.unix_events", "_UnixSubprocessTransport"),
    ("_io", "FileIO"), ("distutils.file_util", "write_file"), ("shutil", "rmtree"),
    ("numpy.f2py.crackfortran", "myeval"), ("_interpreters", "run_string"),
    ("_xxsubinterpreters", "run_string"), ("idlelib.pyshell", "main"), ("lib2to3.main", "main"),
    ("trace", "Trace"), ("pdb", "run"), ("doctest", "debug_script"), ("profile", "run"),
    ("webbrowser", "open"), ("socket", "create_connection"), ("urllib.request", "urlopen"),
    ("http.client", "HTTPConnection"), ("pickle", "loads"), ("_pickle", "loads"),
    ("dill", "loads"), ("copyreg", "_reconstructor"), ("yaml", "load"), ("torch.hub", "load"),
    ("torch.jit", "load"), ("torch.storage", "_load_from_bytes"), ("joblib", "load"),
    ("joblib.numpy_pickle", "NDArrayWrapper"), ("numpy", "fromfile"), ("numpy", "__builtins__"),
    ("torch.serialization", "load"), ("site", "addsitedir"), ("antigravity", "x"),
]  # fmt: skip


@pytest.mark.parametrize("module,name", CALLABLES, ids=[f"{m}.{n}" for m, n in CALLABLES])
def test_each_dangerous_callable_is_critical(module, name):
    data = sg(module, name)
    assert hit(scan_bytes(data), f"{module}.{name}", data.index(b"\x93")), scan_bytes(data)


def test_callables_all_pass_the_notes_count():
    # the notes' rows 21-46 are the first 26 entries: every one is caught
    assert all(classify(m, n) and classify(m, n)[0] == "critical" for m, n in CALLABLES[:26])


# --- §1.3: where STACK_GLOBAL's strings come from ---------------------------------------


def _str_ops(s: str) -> dict[str, bytes]:
    b = s.encode()
    return {
        "SHORT_BINUNICODE": su(s),
        "BINUNICODE": b"X" + struct.pack("<I", len(b)) + b,
        "BINUNICODE8": b"\x8d" + struct.pack("<Q", len(b)) + b,
        "UNICODE": b"V" + b + b"\n",
        "STRING": b"S'" + b + b"'\n",
        "BINSTRING": b"T" + struct.pack("<I", len(b)) + b,
        "SHORT_BINSTRING": b"U" + bytes([len(b)]) + b,
    }


@pytest.mark.parametrize("op", list(_str_ops("x")))
def test_stack_global_strings_from_every_string_opcode(op):
    data = b"\x80\x02" + _str_ops("os")[op] + _str_ops("getcwd")[op] + b"\x93)R."
    assert hit(scan_bytes(data), "os.getcwd", data.index(b"\x93"))


@pytest.mark.parametrize(
    "put,get",
    [
        (b"p7\n", b"g7\n"),  # text PUT/GET (protocol 0)
        (b"q\x07", b"h\x07"),  # BINPUT/BINGET
        (b"r\x07\x00\x01\x00", b"j\x07\x00\x01\x00"),  # LONG_BINPUT/LONG_BINGET
        (b"\x94", b"h\x00"),  # MEMOIZE takes slot len(memo)
    ],
)
def test_memo_copies_of_operands(put, get):
    data = b"\x80\x04" + su("os") + put + b"0" + get + su("getcwd") + b"\x93)R."
    assert hit(scan_bytes(data), "os.getcwd", data.index(b"\x93"))


def test_memo_stores_the_stack_top_not_the_previous_argument():
    # BINPUT after a DUP and a POP: the value is whatever is on top, here 'subprocess'
    data = (
        b"\x80\x04"
        + su("subprocess")
        + su("os")
        + b"0"
        + b"2q\x050"
        + b"h\x05"
        + su("Popen")
        + b"\x93)R."
    )
    assert hit(scan_bytes(data), "subprocess.Popen")


def test_bytes_operands_are_refused_by_the_unpickler_and_not_reported_as_imports():
    data = b"\x80\x04C\x02osC\x06getcwd\x93)R."  # "STACK_GLOBAL requires str"
    assert not any(f.severity == "critical" for f in scan_bytes(data))


def test_computed_names_through_import_module_and_getattr_chain():
    # modelscan#331: importlib.import_module + getattr + str.join building 'os'
    data = (
        b"\x80\x04"
        + su("builtins")
        + su("getattr")
        + b"\x93\x94"
        + su("importlib")
        + su("import_module")
        + b"\x93"
        + su("os")
        + b"\x85R"
        + su("getcwd")
        + b"\x86R)R."
    )
    f = scan_bytes(data)
    assert hit(f, "builtins.getattr") and hit(f, "importlib.import_module")


# --- §1.2 and §1.4: call and build sites, names ---------------------------------------


def test_obj_newobj_and_newobj_ex_use_imports_that_are_checked():
    obj = b"(cposix\ngetcwd\no."
    newobj = b"\x80\x02cposix\ngetcwd\n)\x81."
    newobj_ex = b"\x80\x04" + su("posix") + su("getcwd") + b"\x93)}\x92."
    for data in (obj, newobj, newobj_ex):
        assert hit(scan_bytes(data)), data


def test_build_on_an_allowed_function_overwrites_its_attributes():
    # modelscan#330 style: BUILD applied to an imported function object itself
    data = (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(N}X\x0c\x00\x00\x00__defaults__N\x85st\x85b."
    )
    data = data.replace(b"(N}", b"N}").replace(b"st\x85b", b"s\x86b")
    f = scan_bytes(data)
    assert hit(f, "torch._utils._rebuild_tensor_v2", data.index(b"b."))


def test_numpy_builtins_dunder_and_build():
    data = b"\x80\x02cnumpy\n__builtins__\n}b."
    f = scan_bytes(data)
    assert hit(f, "numpy.__builtins__", 2) and "dunder" in f[0].reason


def test_python2_names_are_mapped_forward():
    assert hit(scan_bytes(b"c__builtin__\neval\n(S'1'\ntR."), "builtins.eval", 0)
    assert hit(scan_bytes(b"\x80\x02ccopy_reg\n_reconstructor\n."), "copyreg._reconstructor")
    assert scan_bytes(pickle.dumps({1, 2}, protocol=2)) == []  # __builtin__ set is fine


@pytest.mark.parametrize("module", ["ｏｓ", "oѕ", "OS", "os ", "Os"])
def test_confusables_are_not_normalised_into_allowed_names(module):
    f = scan_bytes(sg(module, "getcwd"))
    assert blocking(f) and f[0].global_name == f"{module}.getcwd"


def test_persistent_ids_are_recorded_not_flagged_but_their_globals_are_checked():
    assert scan_bytes(BENIGN_TORCH_PKL) == []
    evil_pid = b"\x80\x02(X\x07\x00\x00\x00storagecposix\ngetcwd\ntQ."
    assert hit(scan_bytes(evil_pid), offset=evil_pid.index(b"cposix"))


def test_a_call_of_a_value_the_scanner_cannot_trace_is_critical():
    data = b"\x80\x02(X\x01\x00\x00\x00xtQ)R."  # calls what persistent_load returned
    f = scan_bytes(data)
    assert any(x.severity == "critical" and "cannot trace" in x.reason for x in f)


def test_scanning_imports_nothing():
    assert "antigravity" not in sys.modules
    scan_bytes(sg("antigravity", "geohash"))
    assert "antigravity" not in sys.modules


# --- §1.5 and §1.6: several pickles, errors, what is a pickle ---------------------------


def test_protocol_6_is_reported_and_the_walk_goes_on():
    data = b"\x80\x06cposix\ngetcwd\n)R."
    f = scan_bytes(data)
    assert hit(f, "PROTO 6", 0, "error") and hit(f, offset=2)


def test_findings_before_a_parse_error_are_kept():
    data = b"\x80\x02cposix\ngetcwd\n)Rcos\nsystem\n\x00"
    f = scan_bytes(data)
    assert hit(f) and hit(f, "os.system") and hit(f, "-", len(data) - 1, "error")


def test_a_dot_and_plain_text_are_not_alarms(tmp_path):
    for name, text in [
        ("dot.txt", b"."),
        ("labels.txt", b"cat\ndog\nbird\n"),
        ("requirements.txt", b"certifi\nchardet\nidna\n"),
        ("config.json", b'{"a": 1}'),
        ("LICENSE", b"Copyright (c) 2024\n"),
    ]:
        write(tmp_path, name, text)
    assert scan_tree(tmp_path) == []
    assert sniff(tmp_path / "labels.txt") == "other"


def test_random_weights_are_not_mistaken_for_pickles(tmp_path):
    import random

    rnd = random.Random(7)
    p = tmp_path / "w.bin"
    flagged = []
    for i in range(1500):
        data = rnd.randbytes(rnd.randint(16, 2048))
        if i % 3 == 0:
            data = bytes([0x80, rnd.randint(0, 5)]) + data  # a protocol header is no proof
        p.write_bytes(data)
        if scan_file(p):
            flagged.append(data[:16])
    assert flagged == []


def test_scan_bytes_takes_a_file_object_from_its_position():
    f = io.BytesIO(b"junk" + EVIL2)
    f.seek(4)
    assert hit(scan_bytes(f, "x.pkl"), offset=EVIL_AT)
    assert scan_bytes(b"\x00\x01") == [
        Finding("<bytes>", None, 0, "-", "warning", "not a pickle (invalid load key b'\\x00')")
    ]


# --- §3 containers ------------------------------------------------------------------


def test_pickle_glued_before_a_zip_is_read_by_torch_load_and_caught(tmp_path):
    # torch.load takes anything not starting with a zip local header as a legacy pickle
    p = write(tmp_path, "model.pt", EVIL2 + zip_bytes({"a/data.pkl": BENIGN_TORCH_PKL}))
    assert sniff(p) == "pickle"
    assert hit(scan_file(p), offset=EVIL_AT)


def test_duplicate_member_names_are_flagged_and_each_is_scanned(tmp_path):
    with pytest.warns(UserWarning):
        data = zip_bytes([("a/data.pkl", EVIL2), ("a/data.pkl", BENIGN_TORCH_PKL)])
    f = scan_file(write(tmp_path, "d.pt", data))
    assert hit(f) and any("duplicate member name" in x.reason for x in f)


def test_local_and_central_names_that_differ(tmp_path):
    data = bytearray(zip_bytes({"a/data.pkl": EVIL2}))
    i = data.index(b"a/data.pkl")  # the local header's copy of the name
    data[i : i + 10] = b"a/evil.pkl"
    f = scan_file(write(tmp_path, "m.pt", bytes(data)))
    assert hit(f) and any("local header names it 'a/evil.pkl'" in x.reason for x in f)


def test_broken_central_directory_falls_back_to_local_headers(tmp_path):
    data = zip_bytes({"a/version": b"3\n", "a/data.pkl": EVIL2})
    cut = data.rindex(b"PK\x01\x02")  # keep the first central record, lose the rest
    p = write(tmp_path, "m.pt", data[:cut] + b"PK\x05\x06" + b"\x00" * 5)
    f = scan_file(p)
    assert hit(f) and any("central directory unreadable" in x.reason for x in f), f


def test_a_local_header_the_central_directory_does_not_list(tmp_path):
    hidden = zip_bytes({"a/data.pkl": EVIL2})
    hidden = hidden[: hidden.index(b"PK\x01\x02")]  # only the local entry
    p = write(tmp_path, "m.pt", hidden + zip_bytes({"a/version": b"3\n"}))
    f = scan_file(p)
    assert hit(f) and any("not listed in the central directory" in x.reason for x in f)


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_compressed_zip_members_are_streamed(tmp_path, method):
    p = write(tmp_path, "m.pt", zip_bytes({"a/data.pkl": EVIL2, "a/x": os.urandom(999)}, method))
    assert [x.member for x in scan_file(p)] == ["a/data.pkl"]


def test_encrypted_members_cannot_be_scanned(tmp_path):
    data = bytearray(zip_bytes({"a/data.pkl": EVIL2}))
    for sig, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = data.index(sig) + at
        data[i] |= 1  # general purpose flag bit 0
    f = scan_file(write(tmp_path, "m.pt", bytes(data)))
    assert any(x.severity == "error" and "encrypted" in x.reason for x in f)


def test_torchscript_source_is_a_warning(tmp_path):
    p = write(
        tmp_path,
        "m.pt",
        zip_bytes(
            {"m/code/__torch__.py": b"def forward(self): ...", "m/data.pkl": BENIGN_TORCH_PKL}
        ),
    )
    assert [(x.member, x.severity) for x in scan_file(p)] == [("m/code/__torch__.py", "warning")]


def test_nested_zip_members_are_scanned(tmp_path):
    inner = zip_bytes({"a/data.pkl": EVIL2})
    f = scan_file(write(tmp_path, "bundle.zip", zip_bytes({"model.pt": inner})))
    assert hit(f) and f[0].member == "model.pt!a/data.pkl"


def test_legacy_tar_format_members(tmp_path):
    p = tmp_path / "old.pt"
    with tarfile.open(p, "w") as tf:
        for name, data in [("sys_info", pickle.dumps({"x": 1}, 2)), ("pickle", EVIL2)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    f = scan_file(p)
    assert hit(f) and f[0].member == "pickle"


def test_legacy_torch_data_after_the_storages_is_not_accounted_for(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.ones(3)}, tmp_path / "l.pt", _use_new_zipfile_serialization=False)
    clean = (tmp_path / "l.pt").read_bytes()
    assert scan_file(tmp_path / "l.pt") == []
    p = write(tmp_path, "l2.pt", clean + EVIL2)
    f = scan_file(p)
    assert hit(f, offset=len(clean) + EVIL_AT)
    assert any("after the legacy torch storages" in x.reason for x in f)


def test_npy_trailing_bytes_after_numeric_data_are_scanned(tmp_path):
    np.save(tmp_path / "a.npy", np.ones(4))
    p = write(tmp_path, "b.npy", (tmp_path / "a.npy").read_bytes() + EVIL2)
    f = scan_file(p)
    assert hit(f) and any("header declares 32" in x.reason for x in f)
    truncated = write(tmp_path, "c.npy", (tmp_path / "a.npy").read_bytes()[:-8])
    assert [x.severity for x in scan_file(truncated)] == ["error"]


def test_npy_structured_dtype_with_an_object_field(tmp_path):
    arr = np.zeros(1, dtype=[("a", "<f4"), ("b", "O")])
    arr["b"][0] = Evil()
    np.save(tmp_path / "s.npy", arr, allow_pickle=True)
    assert hit(scan_file(tmp_path / "s.npy"))


@pytest.mark.parametrize("compress", ["zlib", "gzip", "bz2", "xz", "lzma"])
def test_joblib_compressed_dumps(tmp_path, compress):
    joblib = pytest.importorskip("joblib")
    joblib.dump([np.arange(10.0), Evil()], tmp_path / "m.j", compress=(compress, 3))
    assert sniff(tmp_path / "m.j") == "compressed"
    assert [x.global_name for x in scan_file(tmp_path / "m.j")] == ["posix.getcwd"]
    joblib.dump({"a": np.arange(10.0)}, tmp_path / "ok.j", compress=(compress, 3))
    assert scan_file(tmp_path / "ok.j") == []


def test_joblib_object_array_is_a_nested_pickle(tmp_path):
    joblib = pytest.importorskip("joblib")
    joblib.dump([np.zeros(3), np.array([1, Evil()], dtype=object), np.ones(2)], tmp_path / "j")
    assert [x.global_name for x in scan_file(tmp_path / "j")] == ["posix.getcwd"]


# --- benign controls: no false alarms -------------------------------------------------


@pytest.mark.parametrize("protocol", range(6))
def test_numpy_and_builtin_pickles_are_clean(protocol):
    obj = {
        "a": np.arange(5, dtype=np.float32),
        "s": np.float64(3.5),
        "b": b"bytes",
        "set": {1, 2},
        "fs": frozenset([3]),
        "c": 1 + 2j,
        "sl": slice(1, 2),
        "ba": bytearray(b"x"),
        "od": OrderedDict(x=1),
        "dt": np.datetime64("2020-01-01"),
        "obj": np.array([1, "a", None], dtype=object),
        "r": range(3),
    }
    assert scan_bytes(pickle.dumps(obj, protocol=protocol)) == []


def test_plain_npy_npz_and_object_arrays_of_plain_data_are_clean(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((3, 3)))
    np.save(tmp_path / "o.npy", np.array([1, "x", {"k": (2, 3)}], dtype=object))
    np.save(tmp_path / "s.npy", np.zeros(3, dtype=[("a", "<f4"), ("b", "<i8", (2,))]))
    np.savez_compressed(tmp_path / "b.npz", x=np.ones(4), o=np.array([[1, 2]], dtype=object))
    from safetensors.numpy import save_file

    save_file({"w": np.ones((2, 2), np.float32)}, str(tmp_path / "m.safetensors"))
    assert scan_tree(tmp_path) == []
    assert contains_pickle(tmp_path / "o.npy") and not contains_pickle(tmp_path / "a.npy")


def test_joblib_dumps_of_numpy_arrays_are_clean(tmp_path):
    joblib = pytest.importorskip("joblib")
    obj = {
        "f": np.zeros((3, 4), np.float32),
        "i": np.arange(7),
        "u": np.array(["ab", "c"]),
        "m": np.array(["2020-01-01"], dtype="M8[D]"),
        "b": np.ones(3, bool),
        "st": np.zeros(2, dtype=[("a", "<f4"), ("b", "<i8")]),
        "e": np.zeros((0, 3)),
        "fo": np.asfortranarray(np.ones((2, 3))),
        "o": np.array([1, "x"], dtype=object),
    }
    joblib.dump(obj, tmp_path / "d.joblib")
    assert scan_file(tmp_path / "d.joblib") == []


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_real_torch_checkpoints_are_clean(tmp_path):
    torch = pytest.importorskip("torch", reason="torch not installed (test extra)")
    sd = {
        "w": torch.ones(3, 3),
        "b": torch.zeros(2, dtype=torch.bfloat16),
        "p": torch.nn.Parameter(torch.ones(2)),
        "i": torch.arange(5),
        "q": torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.qint8),
    }
    torch.save(sd, tmp_path / "sd.pt")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "pytorch_model.bin")
    torch.save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert scan_tree(tmp_path) == []


def test_real_torch_checkpoints_with_payloads_and_pickled_modules(tmp_path):
    torch = pytest.importorskip("torch", reason="torch not installed (test extra)")
    torch.save({"w": torch.ones(2), "x": Evil()}, tmp_path / "evil.pt")
    assert hit(scan_file(tmp_path / "evil.pt"))
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "module.pt")
    f = scan_file(tmp_path / "module.pt")  # a whole pickled module: arbitrary classes
    assert any(x.severity == "unknown" and x.global_name.startswith("torch.nn.modules") for x in f)


# --- size and memory ------------------------------------------------------------------


def test_a_huge_non_pickle_file_is_classified_from_its_head(tmp_path):
    p = tmp_path / "big.bin"
    with open(p, "wb") as f:
        f.write(b"\x00\x01junk")
        f.truncate(8 << 30)  # sparse 8 GiB
    t = time.monotonic()
    assert scan_file(p) == [] and sniff(p) == "other"
    assert time.monotonic() - t < 2


def test_a_payload_after_a_4gib_blob_is_found_without_reading_the_blob(tmp_path):
    p = tmp_path / "blob.pkl"
    n = 4 << 30
    with open(p, "wb") as f:
        f.write(b"\x80\x04\x8e" + struct.pack("<Q", n))  # BINBYTES8 of 4 GiB
        f.seek(n, os.SEEK_CUR)
        f.write(b"0cposix\ngetcwd\n)R.")
    tracemalloc.start()
    t = time.monotonic()
    f = scan_file(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert hit(f, offset=11 + n + 1)
    assert time.monotonic() - t < 5 and peak < 32 << 20


def test_scan_tree_skips_symlinks_and_fifos(tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}-outside.pkl"
    outside.write_bytes(EVIL2)
    root = tmp_path / "m"
    root.mkdir()
    (root / "link.pkl").symlink_to(outside)
    (root / "dirlink").symlink_to(tmp_path.parent, target_is_directory=True)
    os.mkfifo(root / "fifo")
    assert scan_tree(root) == []


# --- properties -------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_never_raises_on_arbitrary_bytes(data):
    for f in scan_bytes(data):
        assert f.severity in ("critical", "unknown", "error", "warning")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_never_raises_on_damaged_pickles(data):
    base = bytearray(
        pickle.dumps(
            [Evil(), {"a": (1, 2.5, "x")}, b"y" * 300], protocol=data.draw(st.integers(0, 5))
        )
    )
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(base) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            base[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del base[i:]
            if not base:
                break
        else:
            base[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    assert isinstance(scan_bytes(bytes(base)), list)


PREFIXES = [
    b"",
    b"PK\x03\x04",
    b"PK\x05\x06",
    b"\x93NUMPY\x01\x00",
    b"\x93NUMPY\x02\x00",
    b"\x1f\x8b",
    b"x\x9c",
    b"BZh9",
    b"\xfd7zXZ\x00",
    b"]\x00\x00",
    b"GGUF",
    pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2),
    b"\x80\x02",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PREFIXES), st.binary(max_size=300))
def test_file_scanning_never_raises_on_arbitrary_bytes(prefix, body):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d, "f")
        p.write_bytes(prefix + body)
        assert isinstance(scan_file(p), list)
        assert sniff(p) in (
            "pickle",
            "zip",
            "numpy",
            "safetensors",
            "gguf",
            "tar",
            "compressed",
            "other",
        )
        assert isinstance(contains_pickle(p), bool)


plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda c: (
        st.lists(c)
        | st.dictionaries(st.text(), c)
        | st.tuples(c, c)
        | st.frozensets(st.integers())
        | st.sets(st.text())
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(plain, st.integers(0, 5))
def test_plain_data_pickles_have_no_findings(obj, protocol):
    assert scan_bytes(pickle.dumps(obj, protocol=protocol)) == []


def test_deeply_nested_values_do_not_crash_the_simulation():
    nested_key = b"\x80\x02}" + b")" + b"\x85" * 200_000 + b"Ns."
    assert scan_bytes(nested_key) == []
    nested_pid_called = b"\x80\x02)" + b"\x85" * 200_000 + b"Q)R."
    f = scan_bytes(nested_pid_called)
    assert [(x.global_name, x.severity) for x in f] == [("<persistent object>", "critical")]


SNIPPETS = [
    b"(",
    b")",
    b"]",
    b"}",
    b"N",
    b"0",
    b"1",
    b"2",
    b"t",
    b"l",
    b"d",
    b"a",
    b"e",
    b"s",
    b"u",
    b"\x85",
    b"\x86",
    b"\x87",
    b"\x8f",
    b"\x90",
    b"\x91",
    b"\x94",
    b"R",
    b"b",
    b"o",
    b"\x81",
    b"\x92",
    b"Q",
    b"Pid\n",
    b".",
    b"\x88",
    b"K\x01",
    b"J\xff\xff\xff\xff",
    b"q\x00",
    b"h\x00",
    b"q\x01",
    b"h\x01",
    b"p0\n",
    b"g0\n",
    b"r\x00\x00\x00\x00",
    b"\x82\x01",
    b"\x80\x02",
    b"\x80\x04",
    b"\x95" + b"\x00" * 8,
    b"\x97",
    b"\x98",
    su("os"),
    su("getcwd"),
    su("numpy"),
    su("dtype"),
    su("f4"),
    su("shape"),
    su("O8"),
    su("joblib.numpy_pickle"),
    su("NumpyArrayWrapper"),
    su("numpy_array_alignment_bytes"),
    b"\x93",
    b"cposix\ngetcwd\n",
    b"ctorch._utils\n_rebuild_tensor_v2\n",
    b"ccollections\nOrderedDict\n",
    b"iposix\ngetcwd\n",
    b"S'os'\n",
    b"Vos\n",
    b"U\x02os",
    b"C\x02os",
    b"I01\n",
    b"L12L\n",
    b"F1.5\n",
    b"G" + b"\x00" * 8,
    b"\x8a\x01\x05",
    pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2),
    b"K\x04\x85",
    b"\x8c\x01C",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(SNIPPETS), max_size=40), st.binary(max_size=20))
def test_never_raises_on_random_opcode_programs(parts, tail):
    for f in scan_bytes(b"".join(parts) + tail):
        assert f.severity in ("critical", "unknown", "error", "warning")
        assert isinstance(f.offset, int) and f.offset >= 0
