"""The guard's stderr lines as text (`mcp-guard: <message>`, the default) or as JSON lines for a
log shipper (`serve --log-format json`): one object a record with its time, level, logger and
message, the message scrubbed and its control characters escaped by secrets.ScrubbingFilter first,
then JSON-encoded in ASCII. In JSON, uvicorn's own records go through the same handler and
filter, so every line has one format. Imports nothing from mcp_guard but secrets."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Literal

from mcp_guard.secrets import LOGGER, ScrubbingFilter

Format = Literal["text", "json"]
TEXT = logging.Formatter("mcp-guard: %(message)s")
_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")
_format: Format = "text"


class JsonLines(logging.Formatter):
    """One JSON object a record, ASCII only: nothing in a message can break the line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        entry = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        return json.dumps(entry, ensure_ascii=True, separators=(",", ":"))


def use_format(kind: Format) -> None:
    """Format every line the guard writes to stderr as `kind`, from now on."""
    global _format
    _format = kind
    formatter = JsonLines() if kind == "json" else TEXT
    for handler in LOGGER.handlers:
        handler.setFormatter(formatter)
        if kind == "json" and not any(isinstance(f, ScrubbingFilter) for f in handler.filters):
            handler.addFilter(ScrubbingFilter())  # records of other loggers (uvicorn) pass here too
    if kind == "json":
        for name in _UVICORN:
            logger = logging.getLogger(name)
            logger.handlers = list(LOGGER.handlers)
            logger.propagate = False


def json_lines() -> bool:
    """Whether the guard's lines are JSON (the HTTP server then leaves uvicorn's logging to us)."""
    return _format == "json"
