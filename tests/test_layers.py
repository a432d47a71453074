"""Imports go one way: core -> methods -> users -> shell (see docs/architecture.md, "Layers"), with no import circle
anywhere, function-level imports included. A new module must be placed in a layer here."""

import ast
from pathlib import Path

import pytest

import freelabel

PACKAGE = Path(freelabel.__file__).parent

# Rank of each top-level module or sub-package; a module may import only modules of its own rank or below.
LAYERS = {
    0: "__init__ errors files config dist hardware interrupts data catalog backbones heads losses memory ema schedules text run",
    1: "methods",
    2: "pretrained",
    3: "encoder",
    4: "engine train evaluate classifier export timm_models pipelines report compare results",
    5: "cli __main__",
}
RANK = {name: rank for rank, names in LAYERS.items() for name in names.split()}


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """``freelabel.x.y`` -> its file, for every module of the package (a package is its ``__init__.py``)."""
    found = {}
    for path in root.rglob("*.py"):
        parts = ["freelabel", *path.relative_to(root).with_suffix("").parts]
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The freelabel modules that ``name`` imports anywhere in its file (top-level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            targets |= {f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names}
    resolved = set()
    for t in targets:
        while t not in known and "." in t:
            t = t.rsplit(".", 1)[0]
        if t in known and t != name:
            resolved.add(t)
    return resolved


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def rank(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    if top not in RANK:
        pytest.fail(f"{module} is in no layer: add {top!r} to LAYERS in tests/test_layers.py")
    return RANK[top]


def upward_edges(g: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in g.items() for b in targets if rank(b) > rank(a))


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while group[-1:] != [v]:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for v in g:
        if v not in index:
            visit(v)
    return groups


def test_imports_point_down_the_layers():
    assert upward_edges(graph()) == []


def test_no_import_circles():
    assert cycles(graph()) == []


def test_the_checks_catch_an_upward_import_and_a_circle(tmp_path):
    """The graph sees function-level and relative imports, so a hidden circle does not pass."""
    root = tmp_path / "freelabel"
    (root / "data").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "data" / "__init__.py").write_text("")
    (root / "data" / "sources.py").write_text("def f():\n    from .captions import g\n")
    (root / "data" / "captions.py").write_text("from .sources import f\nfrom ..cli import main\n")
    (root / "cli.py").write_text("import freelabel.data.sources\n")
    found = modules(root)
    g = {name: imports(name, path, set(found)) for name, path in found.items()}
    assert g["freelabel.data.sources"] == {"freelabel.data.captions"}
    assert upward_edges(g) == ["freelabel.data.captions -> freelabel.cli"]
    assert cycles(g) == [["freelabel.cli", "freelabel.data.captions", "freelabel.data.sources"]]


def test_errors_are_one_family():
    """Every error freelabel defines derives from FreelabelError (errors.py), so the CLI catches one type."""
    import builtins

    from freelabel import errors

    family = {name for name, obj in vars(errors).items() if isinstance(obj, type) and issubclass(obj, Exception)}
    assert all(issubclass(getattr(errors, name), errors.FreelabelError) for name in family)
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and name != "freelabel.errors":
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                raised = {b for b in bases if isinstance(getattr(builtins, b, None), type)}
                assert not {b for b in raised if issubclass(getattr(builtins, b), Exception)}, (
                    f"{name}.{node.name} derives from a built-in exception; derive it from freelabel.errors"
                )
