"""JSON log lines carry the standard fields and any extra= fields."""

from __future__ import annotations

import json
import logging

from fedseed.logs import JsonFormatter


def test_json_lines_have_fields_and_extras() -> None:
    record = logging.LogRecord("fedseed.server", logging.INFO, "x.py", 1, "round %d closed", (3,), None)
    record.round = 3  # as logging does for extra={"round": 3}
    entry = json.loads(JsonFormatter("coordinator").format(record))
    assert entry["msg"] == "round 3 closed" and entry["round"] == 3
    assert (entry["level"], entry["logger"], entry["component"]) == ("INFO", "fedseed.server", "coordinator")
    assert entry["ts"].endswith("+00:00")
