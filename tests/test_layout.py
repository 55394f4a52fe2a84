"""The repository's layering rules, checked on the source: pipelines compose lib/ and never import each other."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-local imports included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_imported_modules_sees_nested_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\ndef f():\n    from pipelines.train import run\n")
    assert imported_modules(source) == {"os", "pipelines.train"}


def test_no_pipeline_imports_another():
    offenders = {path.name: sorted(m for m in imported_modules(path) if m == "pipelines" or m.startswith("pipelines."))
                 for path in sorted((ROOT / "pipelines").glob("*.py"))}
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_lib_imports_neither_pipelines_nor_jobs():
    offenders = {str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path)
                                                     if m.split(".")[0] in ("pipelines", "jobs"))
                 for path in sorted((ROOT / "lib").rglob("*.py"))}
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def _offenders(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.startswith(forbidden))
             for p in sorted((ROOT / "lib" / "dlspark" / package).rglob("*.py"))}
    return {name: mods for name, mods in found.items() if mods}


def test_model_definitions_import_no_workflow_and_inference_no_export():
    """models/ is pure model code; the export workflow sits above inference and tracking (no import cycle)."""
    assert _offenders("models", ("dlspark.inference", "dlspark.export", "dlspark.tracking", "dlspark.train")) == {}
    assert _offenders("inference", ("dlspark.export",)) == {}
    assert _offenders("tracking", ("dlspark.export", "dlspark.inference")) == {}
