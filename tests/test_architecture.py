"""The house rules of docs/architecture.md, read from the code's own imports.

- No product module imports a stand-in (``ecephys_pipeline.fake``, ``ecephys_pipeline.synth``):
  the product must run against the real services with the stand-ins deleted. Only the entry
  point ``__main__.py`` (which wraps the demo around the CLI) and the stand-ins themselves may.
- The rule scripts are product code too.
- The package's import graph (every import, also those inside functions) has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "ecephys_pipeline"
STAND_INS = ("ecephys_pipeline.fake", "ecephys_pipeline.synth")
WRAPPERS = {"ecephys_pipeline.__main__"}  # composition roots: wrap the demo around the product


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(source: str, module: str, *, is_package: bool, known: set[str]) -> set[str]:
    """Every ``ecephys_pipeline`` module that ``source`` imports (absolute or relative, at any
    depth of the code), resolved to the most specific known module."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{alias.name}" for alias in node.names] + [prefix]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("ecephys_pipeline") and target != module:
                found.add(target)
    # ``from pkg import name`` adds both pkg.name (if a module) and pkg: keep the specific one
    return {t for t in found if not any(o.startswith(t + ".") for o in found)}


def package_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {
        name: imports_of(path.read_text(), name, is_package=path.name == "__init__.py", known=known)
        for name, path in files.items()
    }


def is_stand_in(module: str) -> bool:
    return any(module == s or module.startswith(s + ".") for s in STAND_INS)


def stand_in_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        if not is_stand_in(m) and m not in WRAPPERS
        for t in targets
        if is_stand_in(t)
    )


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_product_module_imports_a_stand_in():
    graph = package_graph()
    assert "ecephys_pipeline.download" in graph or any(
        m.startswith("ecephys_pipeline.download.") for m in graph
    ), "the graph was not read"
    assert stand_in_imports(graph) == []


def test_rule_scripts_import_no_stand_in():
    known = set(package_graph())
    for script in sorted((REPO / "workflow" / "scripts").glob("*.py")):
        found = imports_of(script.read_text(), "script", is_package=False, known=known)
        assert not [t for t in found if is_stand_in(t)], script.name


def test_the_package_has_no_import_cycle():
    assert find_cycle(package_graph()) is None


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("from .fake import demo\n", "ecephys_pipeline.plan"),
        ("def f():\n    from . import synth\n", "ecephys_pipeline.sources"),
        ("import ecephys_pipeline.fake.server as s\n", "ecephys_pipeline.metadata"),
        ("from ..synth import records\n", "ecephys_pipeline.download.engine"),
    ],
)
def test_the_check_sees_every_form_of_import(source, module):
    """The checker itself: each way of writing a forbidden import is caught."""
    known = set(package_graph()) | {module}
    is_package = False
    found = imports_of(source, module, is_package=is_package, known=known)
    assert stand_in_imports({module: found}), (source, found)


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


CLIENT_PROTOCOL = (
    "ecephys_pipeline.rma",
    "ecephys_pipeline.dandi",
    "ecephys_pipeline.sources",
    "ecephys_pipeline.download",
)


def test_the_fake_shares_no_protocol_code_with_the_client():
    """The stand-in server speaks the RMA, S3 and DANDI protocols with its own code: a bug shared
    with the client's query builder, listing reader or download engine would pass every test."""
    shared = sorted(
        f"{m} -> {t}"
        for m, targets in package_graph().items()
        if m.startswith("ecephys_pipeline.fake")
        for t in targets
        if any(t == c or t.startswith(c + ".") for c in CLIENT_PROTOCOL)
    )
    assert shared == []
