"""The package's imports run one way: no module imports, directly or through a chain, one that imports it back.

Every ``import`` / ``from ... import`` statement counts, wherever it stands (a function-level import is
still a dependency). Registration by name (``importlib.import_module`` in the registry's discovery of
built-ins, like entry points) is discovery, not an import, and is not counted.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> its import name, as pyproject.toml installs them.
PACKAGES = {"harness": "harness", "methods": "harness.methods", "benchmarks": "harness.benchmarks",
            "leaderboard": "harness.leaderboard"}


def module_files(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for folder, name in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([name, *parts])] = path
    # harness/ folders shadowed by the top-level ones (none today) would collide; the installed names win.
    return out


def imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """The package modules that ``path`` imports (a ``from pkg import name`` counts as ``pkg.name`` when that
    is a module, else as ``pkg``)."""
    is_pkg = path.name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                stem = ".".join(anchor + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:   # `import harness.x.y` of a module in a package we map
                t = t.rpartition(".")[0]
            if t and t != module:
                found.add(t)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = module_files(root)
    known = set(files)
    graph = {m: imports_of(p, m, known) for m, p in files.items()}
    # importing a.b.c runs a/__init__ and a/b/__init__ first: those are edges too
    for m in list(graph):
        for deps in [graph[m]]:
            for d in list(deps):
                parts = d.split(".")
                for i in range(2, len(parts)):
                    parent = ".".join(parts[:i])
                    if parent in known and parent != m and not m.startswith(parent + "."):
                        deps.add(parent)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_circle():
    found = cycles(import_graph())
    assert not found, "import circles (each group imports itself through the others):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_the_checker_finds_a_circle_added_on_purpose(tmp_path):
    import shutil

    for folder in PACKAGES:
        shutil.copytree(ROOT / folder, tmp_path / folder)
    assert not cycles(import_graph(tmp_path))
    # scoring is at the bottom; make one of its modules import the runner (which reaches scoring back)
    victim = tmp_path / "harness" / "scoring" / "text.py"
    victim.write_text(victim.read_text() + "\n\ndef _late():\n    from harness.run import runner  # noqa: F401\n")
    found = cycles(import_graph(tmp_path))
    assert any("harness.scoring.text" in c and "harness.run.runner" in c for c in found), found


def test_every_module_of_harness_sits_in_a_stage_folder():
    top = sorted(p.name for p in (ROOT / "harness").glob("*.py"))
    # the public entry points stay at the top: the command line, the plugin registry, the error type
    assert top == ["__init__.py", "cli.py", "errors.py", "registry.py"], top


@pytest.mark.parametrize("lower, upper", [
    ("harness.scoring", "harness.run"), ("harness.scoring", "harness.training"), ("harness.scoring", "harness.engines"),
    ("harness.engines", "harness.run"), ("harness.training", "harness.run"), ("harness.data", "harness.engines"),
    ("harness.data", "harness.training"), ("harness.run", "harness.cli"),
    # importers sit beside run: scoring, data, engines and training never reach them, nor do they reach the CLI
    ("harness.scoring", "harness.imports"), ("harness.data", "harness.imports"), ("harness.engines", "harness.imports"),
    ("harness.training", "harness.imports"), ("harness.imports", "harness.cli"), ("harness.imports", "harness.run.runner"),
])
def test_a_lower_stage_never_imports_a_higher_one(lower, upper):
    graph = import_graph()
    bad = sorted(f"{m} -> {d}" for m, deps in graph.items() if m.startswith(lower) for d in deps
                 if d == upper or d.startswith(upper + "."))
    assert not bad, bad


def test_a_plugin_on_the_old_import_paths_still_works_and_is_told_the_new_one(tmp_path):
    """Plugins of 0.1 import harness.losses, harness.training, ...: they get the moved module and a warning."""
    import subprocess
    import sys

    plugin = tmp_path / "old_paths.py"
    plugin.write_text(
        "import warnings\n"
        "warnings.simplefilter('always')\n"
        "from harness.losses import answer_ce\n"
        "from harness.training import TrainConfig\n"
        "import harness.training.losses as new_losses\n"
        "import harness.losses as old_losses\n"
        "assert old_losses is new_losses and answer_ce is new_losses.answer_ce\n"
        "from harness.training.loop import TrainConfig as NewTrainConfig\n"
        "assert TrainConfig is NewTrainConfig\n"
        "from harness.training import distributed  # a submodule: no warning, the real module\n"
        "import harness.training.distributed as d\n"
        "assert distributed is d\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, str(plugin)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert "harness.losses moved to harness.training.losses" in out.stderr
    assert "harness.training.TrainConfig moved to harness.training.loop.TrainConfig" in out.stderr
    assert "distributed moved" not in out.stderr


def test_an_unknown_name_under_a_moved_folder_is_an_ordinary_import_error():
    import importlib

    with pytest.raises(ImportError):
        importlib.import_module("harness.nosuchmodule")
    with pytest.raises(AttributeError):
        import harness.training as training

        training.no_such_name  # noqa: B018
