"""Keras configs: models written by Keras itself (torch backend) pass, code-running ones don't."""

from __future__ import annotations

import json
import os
import zipfile

import pytest

from reconcile.validation.builtin import modelscan

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")


def dense(lam: bool = False):
    layers = [keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
              keras.layers.Dropout(0.1), keras.layers.Dense(2)]
    if lam:
        layers.append(keras.layers.Lambda(lambda x: x * 2, name="doubler"))
    return keras.Sequential(layers)


def test_models_keras_writes_pass(tmp_path):
    dense().save(tmp_path / "model.keras")
    dense().save(tmp_path / "legacy.h5")
    dense().save_weights(tmp_path / "only.weights.h5")
    keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3)).save(
        tmp_path / "mobilenet.keras")
    assert modelscan(tmp_path) == []


@pytest.mark.parametrize("name", ["model.keras", "legacy.h5"])
def test_a_lambda_layer_is_flagged_in_both_formats(tmp_path, name):
    dense(lam=True).save(tmp_path / name)
    out = modelscan(tmp_path)
    assert any(f.startswith(f"{name}: Lambda layer 'doubler'") for f in out), out


def rewrite_config(path, change) -> None:
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    doc = json.loads(members["config.json"])
    change(doc)
    members["config.json"] = json.dumps(doc).encode()
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)


def layer(doc, i):
    return doc["config"]["layers"][i]


@pytest.mark.parametrize("change,expect", [
    (lambda d: layer(d, 1).update(module="builtins", class_name="exec"), "module 'builtins'"),
    (lambda d: layer(d, 1).update(module="keras.config",
                                  class_name="enable_unsafe_deserialization"),
     "module 'keras.config'"),
    (lambda d: layer(d, 2).update(module="keras.src.utils.file_utils", class_name="get_file"),
     "module 'keras.src.utils.file_utils'"),
    (lambda d: d["config"].update(safe_mode=False), "safe_mode"),
])
def test_gadgets_in_a_config_are_flagged(tmp_path, change, expect):
    dense().save(tmp_path / "model.keras")
    rewrite_config(tmp_path / "model.keras", change)
    out = modelscan(tmp_path)
    assert any(expect in f for f in out), out


def test_an_unreadable_legacy_config_is_refused(tmp_path):
    dense().save(tmp_path / "legacy.h5")
    data = (tmp_path / "legacy.h5").read_bytes()
    (tmp_path / "legacy.h5").write_bytes(data.replace(b'{"class_name"', b'{"class_nome"', 1))
    assert modelscan(tmp_path) == []  # the outer object no longer names a class: harmless
    for key in (b'{"class_name"', b'{"module"'):
        data = data.replace(key, key.replace(b"{", b"["))
    (tmp_path / "legacy.h5").write_bytes(data)
    assert any("cannot be read" in f for f in modelscan(tmp_path))


def test_a_decoy_cannot_hide_a_lambda_in_a_damaged_config(tmp_path):
    dense(lam=True).save(tmp_path / "legacy.h5")
    data = (tmp_path / "legacy.h5").read_bytes()
    broken = data.replace(b'{"class_name": "Sequential"', b'{"class_name": "Sequential" ', 1)
    broken = broken.replace(b'"layers": [', b'"layers": [,', 1)  # outer JSON no longer parses
    (tmp_path / "legacy.h5").write_bytes(broken)
    assert any("Lambda layer 'doubler'" in f for f in modelscan(tmp_path))
