"""Logging: the request id of the request being served, text or JSON lines, access lines.

The HTTP wrapper (``server/frontends/http/security.py``) and the gRPC interceptor
(``server/frontends/grpc/interceptors.py``) set :data:`request_id` for the task serving a
request, so every line logged while serving it (an error's included) carries the id:
``... (request_id=...)`` at the end of a text line, a ``request_id`` key in a JSON one.

``--log-format json`` also logs one line per request at INFO on ``deepserve.access``
(:func:`access`); in text mode those lines are DEBUG, so the default output stays as it was.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
import uuid

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("deepserve_request_id", default=None)

access_log = logging.getLogger("deepserve.access")
MAX_REQUEST_ID_CHARS = 128
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Record attributes every LogRecord has; anything else was passed with ``extra=`` and is a field.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id", "color_message"}


def new_request_id() -> str:
    return uuid.uuid4().hex


def clean_request_id(value: str | bytes | None) -> str:
    """The client's id when it is 1-128 printable ASCII characters, else a new one."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            value = None
    if value and len(value) <= MAX_REQUEST_ID_CHARS and all(" " <= c <= "~" for c in value):
        return value
    return new_request_id()


class _RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (``None`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class TextFormatter(logging.Formatter):
    """Today's text lines, with `` (request_id=...)`` appended to lines logged inside a request."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        if rid is None:
            return line
        first, sep, rest = line.partition("\n")  # after the message, before a traceback
        return f"{first} (request_id={rid}){sep}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts``, ``level``, ``logger``, ``message``, ``request_id``
    when set, every ``extra=`` field, and ``exception`` (the traceback) for errors."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid is not None:
            entry["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(level: str, fmt: str = "text") -> None:
    """The root handler (stderr) in ``fmt``; replaces handlers a previous call installed."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_deepserve", False)]:
        root.removeHandler(old)
    handler._deepserve = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    global ACCESS_LEVEL
    ACCESS_LEVEL = logging.INFO if fmt == "json" else logging.DEBUG


ACCESS_LEVEL = logging.DEBUG  # INFO under --log-format json (setup_logging)


def access_enabled() -> bool:
    return access_log.isEnabledFor(ACCESS_LEVEL)


def access(
    protocol: str, method: str, route: str, model: str | None, status: int | str, reason: str | None, duration_s: float
) -> None:
    """The one line a finished request logs (call it inside the request: it reads :data:`request_id`)."""
    access_log.log(
        ACCESS_LEVEL,
        "%s %s %s -> %s in %.1f ms%s",
        protocol, method, route, status, duration_s * 1e3, f": {reason}" if reason else "",
        extra={
            "event": "request", "protocol": protocol, "method": method, "route": route, "model": model,
            "status": status, "outcome": _outcome(status), "reason": reason,
            "duration_ms": round(duration_s * 1e3, 3),
        },
    )


def _outcome(status: int | str) -> str:
    if isinstance(status, int):
        return "ok" if status < 400 else "error"
    return "ok" if status == "OK" else "error"
