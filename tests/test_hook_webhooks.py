"""mlflow_unlearn/hook/webhooks.py: `hook install` creates the webhook once and updates it in place
(matched by name) on every later install; bad input is refused before anything is written. Events
firing through a real `mlflow server`: test_hook_e2e.py."""
from __future__ import annotations

import pytest
from mlflow import MlflowClient

from mlflow_unlearn.hook.config import EVENTS
from mlflow_unlearn.hook.local import webhook_server_env
from mlflow_unlearn.hook.webhooks import install_webhook

SECRET = "a-secret-of-at-least-16-bytes"


@pytest.fixture(autouse=True)
def local_receivers_allowed(tracking, tmp_path, monkeypatch):
    """MLflow validates the URL and encrypts the secret in the client process too: the same
    environment the server needs for a receiver on 127.0.0.1 (docs/design.md section 5)."""
    for key, value in webhook_server_env(tmp_path).items():
        monkeypatch.setenv(key, value)


def test_install_creates_once_then_updates_in_place(tracking):
    first = install_webhook("http://127.0.0.1:8765/webhook", SECRET)
    again = install_webhook("http://127.0.0.1:9999/webhook", SECRET)
    assert first["action"] == "created" and again["action"] == "updated" and again["id"] == first["id"]
    hooks = list(MlflowClient().list_webhooks())
    assert [(h.name, h.url) for h in hooks] == [(first["name"], "http://127.0.0.1:9999/webhook")]
    assert sorted(str(e) for e in hooks[0].events) == sorted(str(e) for e in EVENTS)
    other = install_webhook("http://127.0.0.1:8765/webhook", SECRET, name="second-hook")  # another name: its own
    assert other["action"] == "created" and len(list(MlflowClient().list_webhooks())) == 2


@pytest.mark.parametrize("url,secret,needle", [
    ("http://127.0.0.1:8765/webhook", "", "no webhook secret"),
    ("http://127.0.0.1:8765/webhook", "short", "16"),
    ("127.0.0.1:8765/webhook", SECRET, "'127.0.0.1:8765/webhook' must start with http:// or https://"),
    ("ftp://127.0.0.1/webhook", SECRET, "must start with http"),
])
def test_bad_input_is_refused_before_anything_is_written(tracking, url, secret, needle):
    with pytest.raises(ValueError) as info:
        install_webhook(url, secret)
    assert needle in str(info.value)
    assert list(MlflowClient().list_webhooks()) == []
