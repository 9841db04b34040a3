"""Shared fixtures: a migrated SQLite tracking store copied per test (migrating a fresh one costs
~4 s), a real `mlflow server` on 127.0.0.1, and small torch thread counts for 2-core machines."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlflow_unlearn.hook.local import free_port, wait_http  # noqa: F401  (shared with `hook demo`)

# Tiny test models run fastest on one thread (a busy 2-core machine makes two threads 10-30x slower), and
# the memorisation estimator's parallel workers use one thread, so serial and parallel results match bit for bit.
torch.set_num_threads(1)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Keep the user's decoded-dataset cache out of the tests.
os.environ.setdefault("MLFLOW_UNLEARN_CACHE", str(Path(os.environ.get("PYTEST_TMPDIR", "/tmp")) / "mlflow_unlearn_test_cache"))


# Tests that need these fixtures talk to real servers (an `mlflow server` subprocess, PostgreSQL):
# integration tests, whatever module they sit in. Slow tests are integration tests too, so that
# `pytest -m "not integration"` (the unit run) never includes them.
INTEGRATION_FIXTURES = frozenset({"mlflow_server", "postgres_db"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """A tracking database that has gone through MLflow's migrations once."""
    import mlflow
    from mlflow.tracking._tracking_service.utils import _get_store

    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    # The Default experiment's artifact location is ./mlruns of the working directory at creation:
    # create it inside the template folder, or every copy would write artifacts into the checkout.
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(db.parent)
        _get_store(f"sqlite:///{db}")  # creates and migrates the schema
    mlflow.set_tracking_uri(None)
    return db


@pytest.fixture
def tracking(tmp_path, sqlite_template, monkeypatch):
    """An empty SQLite tracking store in a fresh working directory; yields its URI."""
    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copy(sqlite_template, db)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{db}"
    use_tracking(monkeypatch, uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def use_tracking(mp: pytest.MonkeyPatch, uri: str) -> None:
    """Point this process's MLflow at `uri`, with no run or experiment left over from another test."""
    import mlflow

    mp.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        mp.delenv(var, raising=False)
    mp.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)  # MLflow caches it per process
    mlflow.set_tracking_uri(uri)


def start_mlflow_server(workdir: Path, backend_uri: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(workdir / "mlflow-server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", backend_uri, "--artifacts-destination", str(workdir / "mlartifacts"), "--workers", "1"],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc=proc)
    except Exception:
        proc.kill()
        raise RuntimeError((workdir / "mlflow-server.log").read_text()[-3000:])
    return proc, url


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, sqlite_template):
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend (shared by the session's tests)."""
    workdir = tmp_path_factory.mktemp("server")
    db = workdir / "mlflow.db"
    shutil.copy(sqlite_template, db)
    proc, url = start_mlflow_server(workdir, f"sqlite:///{db}")
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def digits():
    from mlflow_unlearn.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def source_model_template(tmp_path_factory, sqlite_template) -> tuple[Path, str]:
    """One registered original model per test process, trained on a digits subset (small, but fitted
    to ~100% train accuracy): (its tracking database, its model URI). Trained once (~5 s), copied per module."""
    import mlflow

    from mlflow_unlearn.steps import train_step

    workdir = tmp_path_factory.mktemp("source-template")
    db = workdir / "mlflow.db"
    shutil.copy(sqlite_template, db)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        use_tracking(mp, f"sqlite:///{db}")
        result = train_step(dataset="digits", model="small_cnn", width=16, subset=400, epochs=8, lr=0.05,
                            batch_size=32, registered_model_name="digits-src", progress=False)
        while mlflow.active_run():
            mlflow.end_run()
    mlflow.set_tracking_uri(None)
    return db, result.model_uri


@pytest.fixture(scope="module")
def source_model(tmp_path_factory, source_model_template):
    """A module-wide tracking store holding one registered original model (a copy of the session's
    template database: registry tags and runs a module adds stay in its copy; the model's artifacts,
    which no test modifies, stay where the template logged them). Yields (tracking_uri, model_uri)."""
    import mlflow

    template_db, model_uri = source_model_template
    workdir = tmp_path_factory.mktemp("source")
    db = workdir / "mlflow.db"
    shutil.copy(template_db, db)
    uri = f"sqlite:///{db}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        use_tracking(mp, uri)
        yield uri, model_uri
        while mlflow.active_run():
            mlflow.end_run()
    mlflow.set_tracking_uri(None)


def postgres_available() -> str | None:
    """None when PostgreSQL answers on 127.0.0.1:5432, else the reason to skip."""
    try:
        import psycopg  # SQLAlchemy 2.1's default driver for postgresql:// URLs
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    try:
        psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=3).close()
    except Exception as exc:
        return f"no PostgreSQL server answers on 127.0.0.1:5432 ({type(exc).__name__})"
    return None


@pytest.fixture
def postgres_db():
    """A fresh PostgreSQL database; yields a SQLAlchemy URL and drops the database afterwards."""
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    import uuid

    import psycopg

    created = []

    def make() -> str:
        name = f"mlu_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        created.append(name)
        return f"postgresql://postgres@127.0.0.1:5432/{name}"

    yield make
    with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", autocommit=True) as conn:
        for name in created:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def redis_or_skip(url: str = "redis://127.0.0.1:6379/15") -> str:
    """The URL of a Redis server that answers (database 15: the tests' own), else skip with the reason."""
    try:
        import redis
    except ImportError:
        pytest.skip("the redis Python package is not installed (pip install redis)")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping()
    except Exception as exc:
        pytest.skip(f"no Redis answers at {url}: {exc}")
    return url


@pytest.fixture(scope="session")
def problem():
    """The tiny unlearning problem of the algorithm tests (tests/algorithm_problem.py), trained once."""
    from algorithm_problem import build_problem

    return build_problem()
