"""JSON log lines carry the standard fields and any extra= fields."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from fedseed.logs import JsonFormatter


def test_json_lines_have_fields_and_extras() -> None:
    record = logging.LogRecord("fedseed.server", logging.INFO, "x.py", 1, "round %d closed", (3,), None)
    record.round = 3  # as logging does for extra={"round": 3}
    entry = json.loads(JsonFormatter("coordinator").format(record))
    assert entry["msg"] == "round 3 closed" and entry["round"] == 3
    assert (entry["level"], entry["logger"], entry["component"]) == ("INFO", "fedseed.server", "coordinator")
    assert entry["ts"].endswith("+00:00")


def test_json_lines_from_concurrent_processes_never_interleave(tmp_path: Path) -> None:
    # The README starts three clients with `&` on one terminal; unbuffered, `print` makes
    # two writes per line and their lines ran together (a CI failure). One write per line.
    script = (
        "import sys, time; from fedseed.logs import print_json_line\n"
        "while time.time() < float(sys.argv[2]): time.sleep(0.001)  # all start together\n"
        "for i in range(2000): print_json_line({'writer': sys.argv[1], 'i': i})\n"
    )
    out = (tmp_path / "out.txt").open("ab")  # O_APPEND: like a pipe, each write lands whole
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.time() + 3.0
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(w), str(start)], stdout=out, env=env)
        for w in range(3)
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    out.close()
    records = [json.loads(line) for line in (tmp_path / "out.txt").read_text().splitlines()]
    assert sorted((r["writer"], r["i"]) for r in records) == [
        (str(w), i) for w in range(3) for i in range(2000)
    ]
