"""The layers: foundation (``pipelines``) <- steps (``preprocess``, ``augment``, ``distill``) <- application
(``distillery``), every import (top level or inside a function) pointing down,
no step importing another step, and no circle between modules (docs/ARCHITECTURE.md)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("pipelines", "preprocess", "augment", "distill", "distillery")
STEPS = ("preprocess", "augment", "distill")
FOUNDATION, STEP, APPLICATION = 1, 2, 3


def modules(root: Path) -> dict[str, Path]:
    """Module name -> source file, for every module of the project's packages below ``root``."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The project modules a file imports, at any depth (``from X import Y`` counts X.Y when it is a module)."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                base = ".".join(parts[:len(parts) - node.level + is_package] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in names:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
    return targets


def unit(module: str) -> tuple[int, str]:
    """(layer, unit): the application, one of the steps, or the foundation."""
    if module.split(".")[0] == "distillery":
        return APPLICATION, "distillery"
    for step in STEPS:
        if module == step or module.startswith(step + "."):
            return STEP, step
    assert module.split(".")[0] == "pipelines", f"{module} belongs to no layer"
    return FOUNDATION, "pipelines"


def violations(root: Path) -> list[str]:
    """Every import that points up or sideways between steps."""
    known = modules(root)
    found = []
    for name, path in known.items():
        layer, own = unit(name)
        for target in imports(path, name, known):
            target_layer, target_unit = unit(target)
            if target_layer > layer or (target_layer == layer and target_unit != own):
                found.append(f"{name} imports {target}")
    return sorted(found)


def circles(root: Path) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    known = modules(root)
    graph = {name: sorted(imports(path, name, known)) for name, path in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                group.append(item)
                if item == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_every_import_points_down_and_no_module_circle():
    assert violations(REPO) == []
    assert circles(REPO) == []


def test_the_checks_catch_upward_sideways_and_circular_imports(tmp_path):
    files = {
        "pipelines/__init__.py": "",
        "pipelines/store.py": "def f():\n    from distillery.cli import main\n",
        "pipelines/cards.py": "from pipelines import store\n",
        "preprocess/__init__.py": "",
        "preprocess/step.py": "import augment.engine\nfrom pipelines import cards\n",
        "augment/__init__.py": "",
        "augment/engine.py": "from . import words\n",
        "augment/words.py": "from augment.engine import x\n",
        "distill/__init__.py": "",
        "distillery/__init__.py": "",
        "distillery/cli.py": "from augment import engine\nfrom preprocess import step\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert violations(tmp_path) == ["pipelines.store imports distillery.cli",
                                    "preprocess.step imports augment.engine"]
    assert sorted(circles(tmp_path)) == [["augment.engine", "augment.words"],        # engine <-> words, and
                                         ["distillery.cli", "pipelines.cards",       # store -> cli -> step ->
                                          "pipelines.store", "preprocess.step"]]   # cards -> store
