"""The core never imports mlflow (docs/design.md section 3), in any form: checked statically over every
import (top-level, relative, `from . import x`, inside functions) and at import time."""
import subprocess
import sys
from pathlib import Path

import pytest

import mlflow_unlearn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import import_graph  # noqa: E402

PKG = Path(mlflow_unlearn.__file__).parent
CORE = ["data", "ids", "models", "training", "compute", "confidences", "progress", "_registry", "memorization", "memorization_estimate", "algorithms", "rum", "metrics",
        "arrays", "statistics", "task", "plans", "scoring", "candidates", "reporting", "forget_sets", "tuning", "compose", "experiment", "plots", "lineage", "gate", "image_input"]


def is_core(module: str) -> bool:
    name = import_graph.short(module)
    return any(name == c or name.startswith(c + ".") for c in CORE)


def core_modules() -> list[str]:
    return sorted(m for m in import_graph.package_modules() if is_core(m))


def test_core_imports_neither_mlflow_nor_the_edge():
    modules = import_graph.package_modules()
    offenders = []
    for imp in import_graph.imports():
        if not is_core(imp.source):
            continue
        target = import_graph.to_module(imp.target, modules)
        edge = target is not None and target != "mlflow_unlearn" and not is_core(target)
        if imp.target.split(".")[0] == "mlflow" or edge:
            offenders.append(f"{imp.source}:{imp.line} imports {imp.target}{' (in a function)' if imp.lazy else ''}")
    assert not offenders, offenders
    assert len(core_modules()) >= 17  # the check looked at the real core, not nothing


@pytest.mark.parametrize("source, expected", [
    ("from . import tracking", "mlflow_unlearn.tracking"),
    ("def f():\n    from .steps import prepare", "mlflow_unlearn.steps.prepare"),
    ("from .. import steps", "mlflow_unlearn.steps"),
    ("import mlflow.pyfunc", "mlflow.pyfunc"),
])
def test_the_check_sees_every_import_form(tmp_path, source, expected):
    """The forms the old check missed (`from . import x`, lazy imports) are found and resolved."""
    pkg = tmp_path / "mlflow_unlearn"
    (pkg / "algorithms").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "algorithms" / "__init__.py").write_text("")
    where = pkg / "algorithms" / "x.py" if source.startswith("from ..") else pkg / "data.py"
    where.write_text(source + "\n")
    found = [i for i in import_graph.imports(pkg) if i.target == expected]
    assert found, [i.target for i in import_graph.imports(pkg)]
    assert found[0].lazy == source.startswith("def ")


def test_no_import_cycles_even_through_function_local_imports():
    assert import_graph.cycles(import_graph.graph(lazy=True)) == []


@pytest.mark.integration
def test_importing_the_core_does_not_load_mlflow():
    modules = [m for m in core_modules()]
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"importing {modules} loaded mlflow"


# Modules whose tests live under another name, with the reason; every other module `a/b.py` has
# tests/test_a_b.py (a package's `__init__` counts as the package).
TESTED_ELSEWHERE = {
    "mlflow_unlearn": "test_packaging.py (version, entry points, what a wheel holds)",
    "mlflow_unlearn.plans": "test_rum.py (plans were part of rum.py; their schema, grammar and validation tests sit beside the executor's)",
    # split out of tuning.py (whose tests exercise them through the search core)
    "mlflow_unlearn.scoring": "test_tuning.py (references, the calibration scorer and the noise floor, beside the studies)",
    "mlflow_unlearn.candidates": "test_tuning.py and test_search.py (the spaces as trials sample them)",
    "mlflow_unlearn.reporting": "test_tuning.py and test_pipeline.py (held-out reports over seeds)",
    "mlflow_unlearn.arrays": "test_metrics.py and test_statistics.py (every check is reached through a metric or statistic)",
    "mlflow_unlearn._registry": "test_plugins.py (the registries as plugins reach them, entry points included)",
    "mlflow_unlearn.algorithms._base": "test_algorithms.py (the interface _base defines is the package's API)",
    "mlflow_unlearn.hook": "only re-exports ledger's tag names: test_hook_ledger.py",
    # split out of hook/jobs.py; their behaviour needs a real server and a running job
    "mlflow_unlearn.hook.promotion": "test_hook_e2e.py (a request on the serving alias follows it and promotes the result)",
    "mlflow_unlearn.hook.repair": "test_hook_e2e.py (a result registered by an interrupted job is repaired by the re-run)",
    "mlflow_unlearn.hook.results": "test_hook_e2e.py and test_hook_evidence.py (the evidence files and description a job writes)",
}


def test_every_module_has_its_own_test_module():
    tests = {p.name for p in Path(__file__).parent.glob("test_*.py")}
    missing = []
    for module in import_graph.package_modules():
        if module in TESTED_ELSEWHERE:
            continue
        expected = "test_" + "_".join(module.split(".")[1:]) + ".py"
        if expected not in tests:
            missing.append(f"{module} -> tests/{expected}")
    assert not missing, f"modules without a test module of their own: {missing}"
    assert set(TESTED_ELSEWHERE) <= set(import_graph.package_modules())  # no stale exception


def test_the_layout_import_graph_is_the_current_one():
    """docs/layout.md's picture is `python tools/import_graph.py --reduced`; a module or import added
    without regenerating it fails here (paste the command's output between the mermaid fences)."""
    readme = (PKG.parent / "docs" / "layout.md").read_text()
    current = import_graph.mermaid(import_graph.collapsed(import_graph.graph()), direction="BT").strip()
    start = readme.index("```mermaid\nflowchart BT") + len("```mermaid\n")
    assert readme[start:readme.index("```", start)].strip() == current
