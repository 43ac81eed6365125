"""ONNX external data stays inside the model: checked on models written by the onnx package."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconcile.validation.builtin import modelscan
from reconcile.validation.onnx_check import check_onnx

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def matmul_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), name="W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 64])], initializer=[w])
    return helper.make_model(graph)


@pytest.fixture
def saved(tmp_path):
    """A model saved the usual way: weights in weights.bin beside model.onnx."""
    onnx.save_model(matmul_model(), str(tmp_path / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    return tmp_path


def retarget(path, **entries: str) -> None:
    """Rewrite the initializer's external_data entries, as an attacker would."""
    m = onnx.load(str(path), load_external_data=False)
    for e in m.graph.initializer[0].external_data:
        if e.key in entries:
            e.value = entries[e.key]
    path.write_bytes(m.SerializeToString())


def test_a_model_saved_with_external_data_passes(saved):
    assert onnx.load(str(saved / "model.onnx")).graph.initializer[0].dims == [64, 64]
    assert check_onnx(saved / "model.onnx", "model.onnx", saved) == []
    assert modelscan(saved) == []


@pytest.mark.parametrize("location,expect", [
    ("../secret.bin", "leaves the model directory"),
    ("sub/../../secret.bin", "leaves the model directory"),
    ("/etc/hostname", "not a plain relative path"),
    ("C:/Windows/win.ini", "not a plain relative path"),
    ("..\\secret.bin", "not a plain relative path"),
    ("gone.bin", "missing"),
])
def test_locations_outside_the_model_are_flagged(saved, location, expect):
    retarget(saved / "model.onnx", location=location)
    problems = check_onnx(saved / "model.onnx", "model.onnx", saved)
    assert len(problems) == 1 and expect in problems[0] and "'W'" in problems[0]
    assert any(expect in f for f in modelscan(saved))


def test_a_symlinked_data_file_is_flagged(saved):
    os.replace(saved / "weights.bin", saved / "real.bin")
    os.symlink("/etc/hostname", saved / "weights.bin")
    assert "is a symlink" in check_onnx(saved / "model.onnx", "model.onnx", saved)[0]
    (saved / "d").mkdir()
    os.replace(saved / "real.bin", saved / "d" / "weights.bin")
    os.symlink("d", saved / "link")
    retarget(saved / "model.onnx", location="link/weights.bin")
    assert "is a symlink" in check_onnx(saved / "model.onnx", "model.onnx", saved)[0]


def test_offset_and_length_must_lie_inside_the_data_file(saved):
    size = (saved / "weights.bin").stat().st_size
    retarget(saved / "model.onnx", offset="0", length=str(size + 1))
    assert "lies outside" in check_onnx(saved / "model.onnx", "model.onnx", saved)[0]


def test_tensors_in_subgraphs_and_nested_directories_are_found(tmp_path):
    t = TensorProto(name="c", data_type=TensorProto.FLOAT, dims=[4],
                    data_location=TensorProto.EXTERNAL)
    t.external_data.add(key="location", value="../../outside.bin")
    then = helper.make_graph([helper.make_node("Constant", [], ["o"], value=t)], "then", [],
                             [helper.make_tensor_value_info("o", TensorProto.FLOAT, [4])])
    inline = numpy_helper.from_array(np.zeros(4, np.float32), name="z")
    other = helper.make_graph([helper.make_node("Constant", [], ["o"], value=inline)], "else",
                              [], [helper.make_tensor_value_info("o", TensorProto.FLOAT, [4])])
    node = helper.make_node("If", ["cond"], ["o"], then_branch=then, else_branch=other)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, [4])])
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "decoder.onnx").write_bytes(helper.make_model(graph).SerializeToString())
    problems = modelscan(tmp_path)
    assert problems == ["onnx/decoder.onnx: tensor 'c': external data location"
                        " '../../outside.bin' leaves the model directory"]


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_reader(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("o")
    (d / "m.onnx").write_bytes(data)
    assert isinstance(check_onnx(d / "m.onnx", "m.onnx", d), list)
