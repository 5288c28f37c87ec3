"""The dependency rule: flows -> pipelines -> models -> features, and only flows imports Prefect."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["features", "models", "pipelines", "flows"]  # each may import only earlier ones


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("layer", LAYERS)
def test_layers_import_only_downwards(layer: str) -> None:
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    for path in (REPO / layer).rglob("*.py"):
        found = imports(path)
        bad = (found & set(LAYERS)) - allowed
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"
        if layer != "flows":
            assert "prefect" not in found, f"{path.relative_to(REPO)} imports prefect"


def test_every_module_has_a_docstring() -> None:
    for layer in LAYERS + ["bench"]:
        for path in (REPO / layer).rglob("*.py"):
            assert ast.get_docstring(ast.parse(path.read_text())), path


def test_addon_jobs_stay_apart_from_the_recommender() -> None:
    # The add-on jobs share only the run store with the nightly recommender.
    for path in (REPO / "pipelines" / "addons").rglob("*.py"):
        tree = ast.parse(path.read_text())
        modules = {
            n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
        } | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        inner = {m for m in modules if m.startswith("pipelines.")}
        assert inner <= {"pipelines.store"} | {
            m for m in inner if m.startswith("pipelines.addons")
        }, f"{path.relative_to(REPO)} imports {inner}"
