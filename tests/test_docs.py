"""The docs say what the code does: generated pages are fresh, links resolve, and the
README's commands run verbatim (in a scratch folder beside this checkout's .venv)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bash_block(heading: str) -> str:
    """The first ```bash block after a README heading."""
    start = README.index(heading + "\n")
    match = re.compile(r"```bash\n(.*?)```", re.S).search(README, start)
    assert match, heading
    return match.group(1)


def test_config_reference_is_generated_from_the_dataclasses() -> None:
    page = (REPO / "docs" / "config-reference.md").read_text()
    assert page == _script("gen_config_reference").render(), "run scripts/gen_config_reference.py"


def test_wire_protocol_sizes_are_the_scripts_output() -> None:
    page = (REPO / "docs" / "wire-protocol.md").read_text()
    table = page.split("<!-- sizes:begin -->\n")[1].split("<!-- sizes:end -->")[0]
    assert table == _script("wire_message_sizes").table()


PAGES = ["README.md", "deploy/README.md", "bench/README.md"]
PAGES += sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page: str) -> None:
    path = REPO / page
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
        assert (path.parent / target).exists(), f"{page} links to missing {target}"


def _workdir(tmp_path: Path) -> Path:
    # The README's commands use paths relative to a checkout; run them in a scratch copy of its
    # layout so that they write their runs and databases there, not into this checkout.
    work = tmp_path / "checkout"
    work.mkdir()
    for name in (".venv", "deploy", "configs", "scripts"):
        (work / name).symlink_to(REPO / name)
    return work


def _bash(script: str, cwd: Path, timeout: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FEDSEED_TOKEN"}
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_quick_start_install_and_test_lines_are_what_ci_runs() -> None:
    install, main_job, tests = bash_block("## Quick start").strip().splitlines()
    ci = (REPO / ".ci" / "run").read_text()
    assert install.split("#")[0].strip() in ci and tests.split("#")[0].strip() in ci.splitlines()
    assert main_job.split("#")[0].strip() == ".venv/bin/fedseed train"


@pytest.mark.slow
def test_quick_start_main_job_and_export_run_verbatim(tmp_path: Path) -> None:
    work = _workdir(tmp_path)
    main_job = bash_block("## Quick start").strip().splitlines()[1]
    proc = _bash(main_job, work, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = float(re.search(r"accuracy after:\s+([0-9.]+)", proc.stdout).group(1))  # type: ignore[union-attr]
    before = float(re.search(r"accuracy before:\s+([0-9.]+)", proc.stdout).group(1))  # type: ignore[union-attr]
    assert after > before
    # The README's example output is this run's: before exactly (the same model on the same
    # examples), after within the tolerance the README states (float summation order differs
    # between CPUs, and a run of 80 steps can end a few examples apart).
    claimed_before = float(re.search(r"accuracy before: ([0-9.]+)", README).group(1))  # type: ignore[union-attr]
    claimed_after = float(re.search(r"accuracy after:\s+([0-9.]+)", README).group(1))  # type: ignore[union-attr]
    tolerance = float(re.search(r"within ([0-9.]+) of the figures above", README).group(1))  # type: ignore[union-attr]
    assert before == claimed_before, (before, claimed_before)
    assert abs(after - claimed_after) <= tolerance, (after, claimed_after, tolerance)
    final_hash = re.search(r"model hash: (sha256:[0-9a-f]+)", proc.stdout).group(1)  # type: ignore[union-attr]
    proc = _bash(bash_block("## Get the model out"), work, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"model hash: {final_hash} (verified against the run's record)" in proc.stdout
    assert (work / "exported" / "default" / "model.safetensors").exists()
    assert "accuracy" in proc.stdout and "ledger: 80 entries" in proc.stdout


@pytest.mark.slow
def test_coordinator_and_clients_block_runs_verbatim(tmp_path: Path) -> None:
    work = _workdir(tmp_path)
    proc = _bash(bash_block("### A coordinator and clients over gRPC"), work, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 3 and {s["rounds"] for s in summaries} == {5}
    assert len({s["model_hash"] for s in summaries}) == 1
    assert "rounds closed: 5" in proc.stdout and "clients: 3 (0 active)" in proc.stdout  # all left


def test_the_default_simulations_byte_total_in_the_readme_is_what_it_counts() -> None:
    # Bytes are counted per message as measured on the gRPC wire (fedseed.simulate's overheads):
    # every replying client sends its scalars in a submit envelope and every selected client gets
    # a task message with the round's reply bytes. No dropout in the default, so all reply.
    from fedseed import simulate

    config = simulate.SimulationConfig()
    assert config.dropout == 0
    replies = config.clients_per_round * config.local_steps * config.directions
    up = replies + config.clients_per_round * simulate.SUBMIT_OVERHEAD_B
    down = config.clients_per_round * (simulate.TASK_OVERHEAD_B + replies)
    claimed = re.search(r"([0-9,]+) bytes on the wire in all", README)
    assert claimed and int(claimed.group(1).replace(",", "")) == config.rounds * (up + down)
