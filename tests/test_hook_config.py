"""mlflow_unlearn/hook/config.py: the hook's configuration and its defaults."""
from __future__ import annotations

import pytest

from mlflow_unlearn.hook.config import HookConfig, default_queue


def test_config_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MLFLOW_UNLEARN_HOOK_MODELS", "a, b")
    monkeypatch.delenv("MLFLOW_UNLEARN_HOOK_QUEUE", raising=False)
    cfg = HookConfig.from_env(workers=3)
    assert cfg.resolved_queue() == str(tmp_path / "mlflow-unlearn-hook.db")  # next to the tracking DB
    assert cfg.models == ["a", "b"] and cfg.watches("a") and not cfg.watches("c") and cfg.workers == 3
    assert default_queue("http://127.0.0.1:5000").endswith("mlflow-unlearn-hook.db")
    with pytest.raises(ValueError, match="secret"):
        HookConfig().validate(need_secret=True)
    with pytest.raises(ValueError, match="worker-type"):
        HookConfig(worker_type="fiber").validate()
