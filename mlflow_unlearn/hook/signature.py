"""MLflow webhook signatures (the format of mlflow/webhooks/delivery.py, Standard-Webhooks style).

Headers of every delivery:
    X-MLflow-Delivery-Id   a UUID per delivery (retries of one delivery reuse it)
    X-MLflow-Timestamp     unix seconds when it was sent
    X-MLflow-Signature     `v1,` + base64(HMAC-SHA256(secret, f"{delivery_id}.{timestamp}.{raw body}"))

`verify` checks all three against the raw body bytes (never a re-serialised JSON, whose spacing
would differ) with a constant-time comparison, and rejects timestamps further than `tolerance_s`
from now in either direction, so a captured request cannot be replayed later; within the window,
replays are caught by the service's delivery-id deduplication.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Mapping

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
VERSION = "v1"
DEFAULT_TOLERANCE_S = 300.0


class SignatureError(ValueError):
    """A webhook call that is unsigned, wrongly signed or stale; the message says which."""


def sign(secret: str, delivery_id: str, timestamp: str | int, body: bytes | str) -> str:
    if isinstance(body, bytes):
        body = body.decode("utf-8")
    content = f"{delivery_id}.{timestamp}.{body}".encode("utf-8")
    digest = hmac.new(secret.encode("utf-8"), content, hashlib.sha256).digest()
    return f"{VERSION},{base64.b64encode(digest).decode('ascii')}"


def signed_headers(secret: str, body: bytes | str, *, delivery_id: str | None = None, timestamp: int | None = None) -> dict[str, str]:
    """The headers MLflow would send with `body` (for tests, tools and the benchmark)."""
    import uuid

    delivery_id = delivery_id or str(uuid.uuid4())
    ts = str(int(time.time()) if timestamp is None else int(timestamp))
    return {"Content-Type": "application/json", DELIVERY_ID_HEADER: delivery_id, TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: sign(secret, delivery_id, ts, body)}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    return value


def verify(headers: Mapping[str, str], body: bytes, secret: str, *, tolerance_s: float = DEFAULT_TOLERANCE_S,
           now: float | None = None) -> str:
    """Check a delivery; return its delivery id, or raise SignatureError."""
    if not secret:
        raise SignatureError("the hook service has no webhook secret configured")
    delivery_id = _header(headers, DELIVERY_ID_HEADER)
    timestamp = _header(headers, TIMESTAMP_HEADER)
    signature = _header(headers, SIGNATURE_HEADER)
    if not signature:
        raise SignatureError(f"unsigned request: no {SIGNATURE_HEADER} header")
    if not delivery_id or not timestamp:
        raise SignatureError(f"missing {DELIVERY_ID_HEADER} or {TIMESTAMP_HEADER} header")
    try:
        ts = int(timestamp)
    except ValueError:
        raise SignatureError(f"{TIMESTAMP_HEADER} {timestamp[:40]!r} is not unix seconds") from None
    age = (time.time() if now is None else now) - ts
    if abs(age) > tolerance_s:
        raise SignatureError(f"stale timestamp: {age:+.0f} s from now (tolerance {tolerance_s:.0f} s)")
    expected = sign(secret, delivery_id, timestamp, body)
    # The header may carry several space-separated signatures (secret rotation, Standard Webhooks).
    if not any(hmac.compare_digest(expected.encode(), s.strip().encode()) for s in signature.split(" ") if s.strip()):
        raise SignatureError("wrong signature")
    return delivery_id
