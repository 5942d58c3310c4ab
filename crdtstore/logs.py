"""Structured logs: one JSON object a line on stderr, through the logging module.

One formatter, :class:`JsonFormatter`, serves our loggers and uvicorn's:
``extra={...}`` fields become keys of the object, and uvicorn's access log
records are split into ``client``, ``method``, ``path`` and ``status`` keys so
log pipelines need no regex. A ``token=`` query parameter is redacted.
"""

from __future__ import annotations

import datetime
import logging
import re
import sys
from typing import Any

import orjson

__all__ = ["JsonFormatter", "configure_logging"]

# Browsers pass the change-feed token in the query string, and uvicorn logs
# paths with their query: never let a token reach the logs.
_TOKEN_PARAM = re.compile(r"([?&]token=)[^&\s\"]*")

# Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message", "taskName"}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line (``ts``, ``level``, ``logger``, ``msg``, extras, ``exc``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, http_version, status = record.args
            path = _redact(str(path))
            entry.update(msg="request", client=client, method=method, path=path, http=http_version, status=status)
        else:
            entry["msg"] = _redact(record.getMessage())
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def _redact(text: str) -> str:
    return _TOKEN_PARAM.sub(r"\1REDACTED", text) if "token=" in text else text


def configure_logging(level: str = "info") -> None:
    """Send every logger (ours and uvicorn's) to stderr as JSON lines.

    Uvicorn is started with ``log_config=None`` so it keeps this setup
    instead of installing its own text formatters.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
