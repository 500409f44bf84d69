"""The floor plan (ARCHITECTURE.md) holds: imports point down the layers, no circles, few lazy
imports and each one says why, and every stage's CLI runs with the orchestrator absent.

`lint-imports` itself runs in the test command (scripts/test.sh); here we show that it fails when
an arrow runs backwards, so a green run means something.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pretrain", "data_pipeline", "tokenizer", "trainer", "eval")
ORCHESTRATOR = ("pretrain.cli", "pretrain.run", "pretrain.jobs", "pretrain.report", "pretrain.plan")
MAX_LAZY_IMPORTS_PER_KLOC = 6.0


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    env = os.environ | {"PYTHONPATH": str(cwd)}
    return subprocess.run([str(exe)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _copy_tree(tmp_path: Path) -> Path:
    dst = tmp_path / "repo"
    dst.mkdir()
    shutil.copy(ROOT / "pyproject.toml", dst)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_lint_imports_passes_and_fails_on_a_backwards_import(tmp_path):
    repo = _copy_tree(tmp_path)
    ok = _lint_imports(repo)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "broken" in ok.stdout and "0 broken" in ok.stdout, ok.stdout
    # A core module that imports the trainer: the layer contract must break and name the import.
    (repo / "pretrain" / "core" / "scratch_backwards.py").write_text("import trainer.model\n")
    bad = _lint_imports(repo)
    assert bad.returncode != 0, bad.stdout
    assert "pretrain.core.scratch_backwards -> trainer.model" in bad.stdout, bad.stdout
    # And a stage CLI that imports the orchestrator.
    (repo / "pretrain" / "core" / "scratch_backwards.py").unlink()
    cli = repo / "tokenizer" / "cli.py"
    cli.write_text(cli.read_text() + "\nimport pretrain.run  # noqa: E402\n")
    bad = _lint_imports(repo)
    assert bad.returncode != 0 and "tokenizer.cli -> pretrain.run" in bad.stdout, bad.stdout


def test_every_orchestrator_module_is_in_the_layer_contract():
    """A new module directly under pretrain/ would escape the contract unless it is listed."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in cfg["contracts"] if c["type"] == "layers")["layers"]
    top = {m.strip() for m in layers[0].replace("|", ":").split(":")}
    assert top == set(ORCHESTRATOR)
    here = {f"pretrain.{p.stem}" for p in (ROOT / "pretrain").glob("*.py") if p.stem != "__init__"}
    assert here == set(ORCHESTRATOR), sorted(here ^ set(ORCHESTRATOR))
    assert layers[1:] == ["eval", "trainer", "tokenizer", "data_pipeline", "pretrain.core"]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        x = stack.pop()
                        on_stack.discard(x)
                        comp.append(x)
                        if x == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
            elif w not in index:
                index[w] = low[w] = len(index)
                stack.append(w)
                on_stack.add(w)
                work.append((w, iter(sorted(edges.get(w, ())))))
            elif w in on_stack:
                low[v] = min(low[v], index[w])
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_anywhere():
    """No circle in the whole import graph, in-function imports included (grimp)."""
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert _cycles(edges) == []


def _in_function_imports() -> tuple[list[tuple[str, int, str]], int]:
    found, num_lines = [], 0
    for name, path in _modules().items():
        src = path.read_text()
        lines = src.splitlines()
        num_lines += len(lines)
        tree = ast.parse(src)
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    found.append((name, node.lineno, lines[node.lineno - 1]))
    return sorted(set(found)), num_lines


def test_few_in_function_imports_and_each_says_why():
    found, num_lines = _in_function_imports()
    per_kloc = len(found) / num_lines * 1000
    assert per_kloc <= MAX_LAZY_IMPORTS_PER_KLOC, (round(per_kloc, 2), len(found), found)
    mods = _modules()
    unexplained = []
    for name, lineno, line in found:
        # The why-comment may sit on the line or above the block of imports it belongs to.
        above = mods[name].read_text().splitlines()[: lineno - 1]
        block = [line]
        while above and (above[-1].strip().startswith(("#", "import ", "from ")) or not above[-1].strip()):
            block.append(above.pop())
            if not block[-1].strip():
                break
        if not any("#" in b for b in block):
            unexplained.append(f"{name}:{lineno}: {line.strip()}")
    assert not unexplained, "in-function imports need a comment saying why:\n" + "\n".join(unexplained)
    own = [f for f in found if f[2].split()[1].split(".")[0] in PACKAGES]
    assert not own, f"our own modules imported inside functions (a circle dodged?): {own}"


_BLOCK_ORCHESTRATOR = """
import importlib.abc, runpy, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name in BLOCKED:
            raise ImportError(f"orchestrator module {{name}} imported by a stage CLI")
sys.meta_path.insert(0, Block())
sys.argv = [{pkg!r}, *{argv!r}]
runpy.run_module({pkg!r}, run_name="__main__")
"""


@pytest.mark.parametrize(
    "pkg, argv",
    [
        ("data_pipeline", ["generate-corpus", "--out", "{tmp}/corpus", "--num-base-docs", "300"]),
        ("data_pipeline", ["run", "--help"]),
        ("tokenizer", ["encode", "--help"]),
        ("trainer", ["train", "--help"]),
        ("eval", ["run", "--help"]),
    ],
)
def test_stage_clis_work_without_the_orchestrator(pkg, argv, tmp_path):
    argv = [a.format(tmp=tmp_path) for a in argv]
    code = _BLOCK_ORCHESTRATOR.format(blocked=ORCHESTRATOR, pkg=pkg, argv=argv)
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "orchestrator module" not in res.stderr
