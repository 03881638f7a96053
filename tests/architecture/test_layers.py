"""The package's layers, as docs/architecture.md states them: a module imports only its own layer
and the layers below it, so there is no import cycle between layers.

Every ``import toolkit...`` / ``from toolkit... import`` counts, including those inside functions
(a lazy import still makes the dependency). The layer list is read from docs/architecture.md, so
the document and the code cannot drift apart silently.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "toolkit"


def documented_layers() -> list[str]:
    """Layer names, lowest first, from the code block under "Layers" in docs/architecture.md."""
    text = (REPO / "docs" / "architecture.md").read_text()
    block = re.search(r"```\n(toolkit/io\.py.*?)```", text, re.S)
    assert block, "docs/architecture.md has no layer block starting with toolkit/io.py"
    names = re.findall(r"^toolkit/([a-z_]+)(?:\.py)?\s", block.group(1), re.M)
    return names


def layer_of(module: str, layers: list[str]) -> int:
    """Layer index of ``toolkit.<part>...``. The bare package (``__version__``) is below every layer,
    ``toolkit.__main__`` above all of them."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] == "__init__":
        return -1
    if parts[1] == "__main__":
        return len(layers)
    if parts[1] not in layers:
        raise AssertionError(f"toolkit.{parts[1]} is in no layer of docs/architecture.md")
    return layers.index(parts[1])


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("toolkit")]
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.startswith("toolkit")
        ):
            found.append((node.lineno, node.module))
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def test_layers_are_documented_in_order():
    layers = documented_layers()
    assert layers[:3] == ["io", "data", "transforms"] and layers[-1] == "cli", layers
    on_disk = {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").is_file()))
        and not p.name.startswith("__")
    }
    assert on_disk == set(layers), f"packages on disk {sorted(on_disk)} vs documented {layers}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_module_imports_no_higher_layer(path):
    layers = documented_layers()
    own = layer_of(module_name(path), layers)
    upward = [
        f"line {line}: {target}" for line, target in imported_modules(path) if layer_of(target, layers) > own
    ]
    assert not upward, f"{path.relative_to(REPO)} (layer {own}) imports a higher layer: {upward}"


def test_package_root_imports_nothing_from_the_layers():
    assert imported_modules(PACKAGE / "__init__.py") == []


def test_the_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "mod.py"
    bad.write_text("def f():\n    from toolkit.inference.runner import run_inference\n")
    layers = documented_layers()
    targets = [t for _, t in imported_modules(bad)]
    assert targets == ["toolkit.inference.runner"]
    assert layer_of(targets[0], layers) > layer_of("toolkit.data.splits", layers)


def _module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def import_graph() -> dict[str, set[str]]:
    """``toolkit`` module -> the toolkit modules its import statements execute (any nesting depth).

    ``from a.b import c`` counts ``a.b.c`` when that is a module, else ``a.b``; importing a module also
    runs the ``__init__`` of each package above it, except the packages the importer itself sits
    in (Python has started those before the importer runs, so they close no circle)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path).removesuffix(".__init__")
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        tree = ast.parse(path.read_text(), filename=str(path))
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("toolkit")}
            elif (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").startswith("toolkit")
            ):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if _module_file(sub) else node.module)
        edges = set()
        for target in targets:
            parts = target.split(".")
            edges |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
        graph[name] = {t for t in edges - own_packages - {name} if _module_file(t)}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_no_import_circle_in_the_package():
    circles = import_circles(import_graph())
    assert not circles, "import circles (lazy imports count): " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_circle_check_finds_a_lazy_circle():
    graph = {
        "toolkit.a": {"toolkit.b"},
        "toolkit.b": {"toolkit.c"},
        "toolkit.c": {"toolkit.a"},
        "toolkit.d": set(),
    }
    assert import_circles(graph) == [["toolkit.a", "toolkit.b", "toolkit.c"]]
    assert import_circles({"toolkit.a": {"toolkit.b"}, "toolkit.b": set()}) == []


def test_no_private_name_is_imported_from_another_module():
    """A name a module imports from another is part of that module's interface: it has a public name."""
    private = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("toolkit"):
                private += [
                    f"{path.relative_to(REPO)}:{node.lineno} {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not private, private
