"""`reconcile lock --key`: the CI cache key of a lock is its models' hashes and nothing else.

A CI cache keyed on it is shared by every branch that locks the same models (whatever the
lock's formatting, comments, order or pins) and missed as soon as any model's bytes change.
"""

from __future__ import annotations

import base64
import dataclasses
import random
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconcile.lockfile import Lock, cache_key, dumps, parse_lock
from tests.test_lockfile_treehash import locks

# generating locks is slow on a busy machine: not a flaw of the strategy
SLOW_OK = settings(suppress_health_check=[HealthCheck.too_slow])
sri_hashes = st.binary(min_size=32, max_size=32).map(
    lambda b: "sha256-" + base64.b64encode(b).decode()
)


def reformat(text: str, rnd: random.Random) -> str:
    """The same lock as a person or another tool might write it: tables and files in another
    order, comments and blank lines everywhere, other spacing around '='."""
    head, *tables = re.split(r"\n(?=\[models\.)", text)
    rnd.shuffle(tables)
    out = [head]
    for table in tables:
        lines = table.splitlines()
        if "files = [" in lines:  # the file entries, one a line, shuffled in place
            start, end = lines.index("files = ["), len(lines) - 1
            entries = lines[start + 1 : end]
            rnd.shuffle(entries)
            lines[start + 1 : end] = entries
        for line in lines:
            if rnd.random() < 0.5:
                out.append(f"# {rnd.choice(['reviewed', 'pinned = by hand', '[models.x]'])}")
            if re.match(r"^[a-z]+ = ", line):
                line = re.sub(r"^([a-z]+) = ", rnd.choice([r"\1=", r"\1   =  ", r"  \1 = "]), line)
            out.append(line + rnd.choice(["", "  # why", "\t"]) if not line.endswith("[") else line)
        out.append("")
    return "\n".join(out) + "\n"


@SLOW_OK
@given(locks(), st.randoms(use_true_random=False))
def test_key_ignores_formatting_comments_and_order(lock, rnd):
    again = parse_lock(reformat(dumps(lock), rnd).encode())
    assert {k: m.hash for k, m in again.models.items()} == {
        k: m.hash for k, m in lock.models.items()
    }
    assert cache_key(again) == cache_key(lock)


@SLOW_OK
@given(locks().filter(lambda lock: lock.models), st.data())
def test_key_changes_when_any_model_hash_changes(lock, data):
    key = data.draw(st.sampled_from(sorted(lock.models)))
    new = data.draw(sri_hashes.filter(lambda h: h != lock.models[key].hash))
    changed = Lock({**lock.models, key: dataclasses.replace(lock.models[key], hash=new)})
    assert cache_key(changed) != cache_key(lock)


@SLOW_OK
@given(locks().filter(lambda lock: lock.models), st.data())
def test_only_keys_depend_on_those_models_alone(lock, data):
    only = data.draw(st.lists(st.sampled_from(sorted(lock.models)), min_size=1, unique=True))
    others = [k for k in lock.models if k not in only]
    changed = Lock(
        {
            **lock.models,
            **{k: dataclasses.replace(lock.models[k], hash=data.draw(sri_hashes)) for k in others},
        }
    )
    assert cache_key(changed, only) == cache_key(lock, only)
    assert cache_key(lock, sorted(lock.models)) == cache_key(lock)


@SLOW_OK
@given(locks())
def test_key_is_short_hex_whatever_the_models(lock):
    assert re.fullmatch(r"[0-9a-f]{24}", cache_key(lock))


def test_lock_key_prints_the_key_offline(project):
    project.write("""\
        [models.a]
        source.mock = { org = "test", model = "minimal", files = ["config.json"] }
        [models.b]
        source.mock = { org = "test", model = "other", files = ["README.md"] }
        """)
    assert project.run("lock").code == 0
    lock = parse_lock(project.lock.read_bytes())
    r = project.run("lock", "--key")
    assert (r.code, r.out, r.err) == (0, cache_key(lock) + "\n", "")
    r = project.run("lock", "--key", "--only", "b")
    assert (r.code, r.out) == (0, cache_key(lock, ["b"]) + "\n")
    assert r.out != cache_key(lock) + "\n"
    # a lock edited by hand only in its comments and spacing keeps its key
    project.lock.write_text("# reviewed\n" + project.lock.read_text().replace(" = ", "="))
    assert project.run("lock", "--key").out == cache_key(lock) + "\n"


def test_lock_key_names_an_unknown_model_and_a_missing_lock(project):
    project.write("""\
        [models.a]
        source.mock = { org = "test", model = "minimal", files = ["config.json"] }
        """)
    r = project.run("lock", "--key")
    assert r.code == 1 and "models.lock" in r.err and "reconcile lock" in r.err
    assert "Traceback" not in r.err
    project.run("lock")
    r = project.run("lock", "--key", "--only", "a", "nope")
    assert r.code == 2 and "'nope'" in r.err and "a" in r.err and r.out == ""
    r = project.run("lock", "--only", "a")
    assert r.code == 2 and "--key" in r.err


@SLOW_OK
@given(locks(), st.dictionaries(st.sampled_from(["commit", "etag"]), st.text(max_size=8)))
def test_key_ignores_model_keys_and_pins(lock, pin):
    """Renaming a model or re-pinning it to the same bytes (a tag moved to an identical
    commit) needs no new cache entry: the bytes are what the cache holds."""
    renamed = Lock(
        {
            f"renamed-{k}": dataclasses.replace(m, key=f"renamed-{k}", pin=pin)
            for k, m in lock.models.items()
        }
    )
    assert cache_key(renamed) == cache_key(lock)
