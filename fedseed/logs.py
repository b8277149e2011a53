"""Log setup shared by the commands: readable lines, or one JSON object per line.

JSON lines (``--log-json``) carry ``ts`` (UTC, ISO 8601), ``level``,
``logger``, ``component`` (coordinator, client NAME, ...), ``msg``, and any
``extra=`` fields, so a log pipeline can filter by round, client or outcome
without parsing prose.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import sys
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "component": self.component,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(component: str, json_lines: bool = False, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    if json_lines:
        handler.setFormatter(JsonFormatter(component))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {component} %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def print_json_line(record: object) -> None:
    """Write one JSON object and its newline to stdout in a single write.

    Several clients started with `&` share one terminal or pipe; `print` makes two
    writes (text, then newline), and under PYTHONUNBUFFERED two processes' lines
    interleave into one unparseable line. One write below PIPE_BUF is atomic."""
    line = json.dumps(record) + "\n"
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, io.UnsupportedOperation, ValueError):  # captured (pytest) or replaced stdout
        sys.stdout.write(line)
        sys.stdout.flush()
        return
    os.write(fd, line.encode())
