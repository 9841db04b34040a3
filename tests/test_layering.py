import pytest
"""The core never imports mlflow (DESIGN.md section 3): checked statically and at import time."""
import ast
import subprocess
import sys
from pathlib import Path

import mlflow_unlearn

PKG = Path(mlflow_unlearn.__file__).parent
CORE = ["data", "models", "training", "confidences", "progress", "_registry", "memorization", "algorithms", "rum", "metrics",
        "forget_sets", "tuning", "plots"]


def core_files():
    for name in CORE:
        p = PKG / f"{name}.py"
        if p.exists():
            yield p
        elif (PKG / name).is_dir():
            yield from sorted((PKG / name).rglob("*.py"))


def test_core_sources_do_not_import_mlflow():
    offenders = []
    for path in core_files():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                # a relative import of an edge module drags mlflow in just the same
                names = ["mlflow" for m in [node.module or ""] if m.split(".")[0] in ("tracking", "steps", "cli", "search", "hook")]
            offenders += [f"{path.relative_to(PKG)}:{node.lineno} imports {n}" for n in names if n.split(".")[0] == "mlflow"]
    assert not offenders, offenders
    assert len(list(core_files())) >= 6  # the check looked at the real core, not nothing


@pytest.mark.integration
def test_importing_the_core_does_not_load_mlflow():
    modules = [f"mlflow_unlearn.{p.relative_to(PKG).with_suffix('').as_posix().replace('/', '.')}" for p in core_files()]
    modules = [m.removesuffix(".__init__") for m in modules]
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"importing {modules} loaded mlflow"
