"""The package's import graph, read from the source: no knot a reader cannot hold.

Counted as imports: every ``import`` and ``from … import`` anywhere in a module (top
level, inside a function, under TYPE_CHECKING), relative ones resolved, and a string
that names one of the package's modules exactly (the source registry imports its
modules by name). A deferred import is still a dependency: it runs the first time the
function does, and a knot hidden in functions is as hard to read as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import REPO

# Every module in the largest knot imports, through the others, every other one. Before
# #35 it was 16 modules (config, the registry, every source, auth, http, transfer).
MAX_KNOT = 1


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package under ``root``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def resolve(importer: str, is_package: bool, module: str | None, level: int) -> str:
    """The absolute name ``from <level dots><module> import …`` means inside ``importer``."""
    if not level:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, module] if module else base)


def imports_of(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its source."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = resolve(name, is_package, node.module, node.level)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in mods else target)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and "." in node.value:
            found.add(node.value)
    return {m for m in found if m in mods and m != name}


def import_graph(root: Path = REPO, package: str = "reconcile") -> nx.DiGraph:
    mods = module_names(root, package)
    graph = nx.DiGraph()
    graph.add_nodes_from(mods)
    for name, path in mods.items():
        graph.add_edges_from((name, dep) for dep in imports_of(name, path, mods))
    return graph


def largest_knot(graph: nx.DiGraph) -> set[str]:
    return max(nx.strongly_connected_components(graph), key=len)


def test_the_model_of_models_toml_never_imports_the_sources():
    """config reads models.toml; the sources fetch. The sources may need config's
    values, never the other way round (sourcetypes hands config the registry)."""
    graph = import_graph()
    reached = nx.descendants(graph, "reconcile.config")
    assert not {m for m in reached if m == "reconcile.sources"
                or m.startswith("reconcile.sources.")}, sorted(reached)


def test_the_network_code_does_not_read_models_toml():
    graph = import_graph()
    for module in ("reconcile.auth", "reconcile.http"):
        assert "reconcile.config" not in nx.descendants(graph, module), module


def test_no_knot_of_modules_that_import_each_other():
    knot = largest_knot(import_graph())
    assert len(knot) <= MAX_KNOT, sorted(knot)


# --- the reader itself: it must see what it claims to see, or the tests above pass on
# a graph with the knots left out


def _package(tmp_path: Path, files: dict[str, str]) -> nx.DiGraph:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return import_graph(tmp_path, "pkg")


def test_a_knot_hidden_in_functions_and_relative_imports_is_found(tmp_path):
    graph = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .sub import b\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "def f():\n    from ..c import x\n",
        "pkg/c.py": "def g():\n    import importlib\n"
                    "    return importlib.import_module('pkg.a')\n",
        "pkg/d.py": "from . import c\nfrom .sub.b import f\n",
    })
    assert largest_knot(graph) == {"pkg.a", "pkg.sub.b", "pkg.c"}
    assert set(graph.successors("pkg.d")) == {"pkg.c", "pkg.sub.b"}


NAME = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)


@given(st.lists(NAME, min_size=1, max_size=4), st.booleans(), st.integers(1, 4),
       st.one_of(st.none(), NAME))
def test_relative_imports_resolve_as_python_resolves_them(parts, is_package, level, module):
    """Checked against importlib's own resolution of the same relative name."""
    import importlib.util

    importer = ".".join(["pkg", *parts])
    anchor = importer if is_package else importer.rpartition(".")[0]
    if level > anchor.count(".") + 1:  # beyond the top: Python refuses, so do we not care
        return
    expected = importlib.util.resolve_name("." * level + (module or ""), anchor)
    assert resolve(importer, is_package, module, level) == expected


def test_config_alone_reads_source_tables_and_import_reconcile_stays_light():
    """In a fresh interpreter: `import reconcile` does not load the sources, and config
    imported alone still checks a source table against that source's own options (the
    registry handed over by reconcile/__init__.py, loaded on first read)."""
    import subprocess
    import sys

    code = (
        "import sys, reconcile\n"
        "assert 'reconcile.sources' not in sys.modules, 'import reconcile loads sources'\n"
        "from reconcile.config import parse_manifest\n"
        "from reconcile.errors import ConfigError\n"
        "m = parse_manifest(b'[models.a]\\nsource.mock = { files = [\"x\"] }\\n')\n"
        "assert m.models['a'].source_type == 'mock'\n"
        "try:\n"
        "    parse_manifest(b'[models.a]\\nsource.s3 = { prefix = \"x/\" }\\n')\n"
        "except ConfigError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "models.a.source.s3.bucket: required" in out.stdout, out.stdout
