"""The envelope every JSON payload carries, and the payload kinds.

Every message on ``status``, ``faces``, ``summary`` and ``events`` starts with the same five fields
(``schema_version``, ``device_id``, ``kind``, ``ts``, ``seq``) followed by the kind's body. ``seq`` is one counter
per device across all four kinds, strictly increasing and persisted on the device
(:mod:`edge.runtime.publish.seq`), so a subscriber can put messages in order and recognise duplicates after a
reconnect or a restart. The JSON Schema of all kinds ships beside this module as ``payloads.schema.json``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from edge.package_data import package_path

SCHEMA_VERSION = 1


#: The payload kinds; each is also the last topic level.
KINDS = ("status", "faces", "summary", "events")


#: The envelope fields, in the order they appear in every payload.
ENVELOPE_FIELDS = ("schema_version", "device_id", "kind", "ts", "seq")


SCHEMA_PATH = package_path("protocol", "payloads.schema.json")


class PayloadError(ValueError):
    """A payload body cannot be wrapped (unknown kind, envelope field in the body, not JSON-serialisable)."""


def make_envelope(kind: str, device_id: str, seq: int, body: dict[str, Any], ts: float | None = None) -> dict[str, Any]:
    """Return ``body`` wrapped in the envelope (envelope fields first, then the body fields in their order).

    Raises:
        PayloadError: ``kind`` is not one of :data:`KINDS`, or the body already uses an envelope field name.
    """
    if kind not in KINDS:
        raise PayloadError(f"unknown payload kind {kind!r}; expected one of {', '.join(KINDS)}")
    clash = [k for k in ENVELOPE_FIELDS if k in body]
    if clash:
        raise PayloadError(f"{kind} body must not contain envelope field(s) {', '.join(clash)}")
    msg: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "device_id": device_id,
        "kind": kind,
        "ts": time.time() if ts is None else float(ts),
        "seq": int(seq),
    }
    msg.update(body)
    return msg


#: Longest echo of a sender's text (command name, request id, a field of its payload) in an answer or a log line.
ECHO_CHARS = 64
#: Longest ``detail`` of a command answer (our text, with the echoed parts already clipped to ECHO_CHARS).
DETAIL_CHARS = 512
#: The ``code`` of a command answer: what a dashboard or script can switch on.
COMMAND_CODES = ("ok", "oversized", "malformed", "unknown_command", "refused", "busy", "failed")


def clip(text: object, limit: int = ECHO_CHARS) -> str:
    """``text`` (``str()`` of anything else) cut to at most ``limit`` characters, a cut one ending in '…', so a
    sender's input can be echoed in an answer or a log line without its size."""
    s = text if isinstance(text, str) else str(text)
    return s if len(s) <= limit else s[: max(0, limit - 1)] + "…"


def command_event(command: str | None, ok: bool, detail: str | None, request: Any = None,
                  code: str | None = None) -> dict[str, Any]:
    """The body of the ``events`` message that answers a command.

    ``code`` is one of :data:`COMMAND_CODES` (default ``ok`` or ``failed``). The command name is clipped to
    :data:`ECHO_CHARS` and the detail to :data:`DETAIL_CHARS`. A ``request_id`` in ``request`` (the command
    object; a string of 1-64 characters) is echoed, so the sender can tell its own answer from others' and
    from re-delivered old ones.
    """
    body: dict[str, Any] = {
        "event": "command", "track_id": None, "command": None if command is None else clip(command), "ok": ok,
        "code": code or ("ok" if ok else "failed"), "detail": None if detail is None else clip(detail, DETAIL_CHARS),
    }
    rid = request.get("request_id") if isinstance(request, dict) else None
    if isinstance(rid, str) and 0 < len(rid) <= ECHO_CHARS:
        body["request_id"] = rid
    return body


#: What json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False) makes for every message,
#: made once (dumps builds an encoder on each call with these options, and the frame loop encodes every frame).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(message: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON of a message. NaN/Infinity are refused because they are not JSON.

    Raises:
        PayloadError: The message holds something JSON cannot represent.
    """
    try:
        return _ENCODER.encode(message).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"{message.get('kind', '?')} payload is not JSON-serialisable: {exc}") from None


def load_schema() -> dict[str, Any]:
    """The JSON Schema (Draft 2020-12) describing every payload kind."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
