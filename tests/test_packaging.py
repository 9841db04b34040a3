"""Packaging (and the package's `__init__`: its version): every third-party module the package
imports is a declared dependency, and the environments `mlflow run` builds (python_env.yaml,
conda.yaml) list exactly pyproject's."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DISTRIBUTION = {"PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml"}
OPTIONAL = {"redis", "psycopg"}  # imported lazily behind an extra ([redis], [test]) with a clear error


def declared() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].lower()


def imported_modules() -> set[str]:
    out = set()
    for path in (REPO / "mlflow_unlearn").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                out.add(node.module.split(".")[0])
    return out


def test_every_direct_import_is_declared():
    third_party = {m for m in imported_modules() if m not in sys.stdlib_module_names and m != "mlflow_unlearn"}
    wanted = {DISTRIBUTION.get(m, m).lower() for m in third_party} - OPTIONAL
    missing = wanted - {name(r) for r in declared()}
    assert not missing, f"imported but not in pyproject.toml dependencies: {sorted(missing)}"


def test_mlflow_floor_has_webhooks():
    (mlflow,) = [r for r in declared() if name(r) == "mlflow"]
    floor = tuple(int(x) for x in re.search(r">=\s*([\d.]+)", mlflow).group(1).split(".")[:2])
    assert floor >= (3, 3), mlflow


def test_project_environments_match_pyproject():
    deps = declared()
    python_env = yaml.safe_load((REPO / "python_env.yaml").read_text())
    assert python_env["dependencies"] == deps
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert pip == deps


def test_license_is_apache():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0" in text


def test_the_package_reports_the_version_it_was_installed_as():
    import importlib.metadata

    import mlflow_unlearn

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert mlflow_unlearn.__version__ == version == importlib.metadata.version("mlflow-unlearn")
