"""mlflow_unlearn/hook/signature.py: MLflow's webhook signature, verified as MLflow computes it."""
from __future__ import annotations

import json
import time

import pytest

from mlflow_unlearn.hook import ledger
from mlflow_unlearn.hook.signature import DELIVERY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureError, sign, signed_headers, verify


SECRET = "s3cret"


BODY = json.dumps({"entity": "model_version_tag", "action": "set", "timestamp": "2026-01-01T00:00:00+00:00",
                   "data": {"name": "m", "version": "3", "key": ledger.FORGET_SET_TAG, "value": "runs:/r/x.json"}}).encode()


def test_signature_matches_mlflow_delivery_code():
    from mlflow.webhooks.delivery import _generate_hmac_signature

    assert sign(SECRET, "d-1", "1700000000", BODY) == _generate_hmac_signature(SECRET, "d-1", "1700000000", BODY.decode())


def test_verify_accepts_a_signed_delivery_and_returns_its_id():
    headers = signed_headers(SECRET, BODY, delivery_id="abc")
    assert verify(headers, BODY, SECRET) == "abc"
    # header names are case-insensitive on the wire
    assert verify({k.lower(): v for k, v in headers.items()}, BODY, SECRET) == "abc"


@pytest.mark.parametrize("case", ["unsigned", "wrong_secret", "tampered_body", "stale", "future", "no_delivery_id", "bad_timestamp"])
def test_verify_rejects(case):
    headers = signed_headers(SECRET, BODY)
    body = BODY
    if case == "unsigned":
        headers.pop(SIGNATURE_HEADER)
    elif case == "wrong_secret":
        headers = signed_headers("other", BODY)
    elif case == "tampered_body":
        body = BODY.replace(b'"3"', b'"4"')
    elif case == "stale":
        headers = signed_headers(SECRET, BODY, timestamp=int(time.time()) - 3600)
    elif case == "future":
        headers = signed_headers(SECRET, BODY, timestamp=int(time.time()) + 3600)
    elif case == "no_delivery_id":
        headers.pop(DELIVERY_ID_HEADER)
    elif case == "bad_timestamp":
        headers[TIMESTAMP_HEADER] = "yesterday"
    with pytest.raises(SignatureError) as err:
        verify(headers, body, SECRET, tolerance_s=300)
    expected = {"unsigned": "unsigned", "wrong_secret": "wrong signature", "tampered_body": "wrong signature",
                "stale": "stale", "future": "stale", "no_delivery_id": "missing", "bad_timestamp": "unix seconds"}[case]
    assert expected in str(err.value)


def test_verify_needs_a_configured_secret():
    with pytest.raises(SignatureError, match="no webhook secret"):
        verify(signed_headers(SECRET, BODY), BODY, "")
