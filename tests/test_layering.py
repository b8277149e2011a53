"""What import-linter cannot see: the transports' imports of themselves and each other.

server/ and client/ install as fedseed.server and fedseed.client. import-linter
analyses them as top-level packages, so their own-module imports must be
relative, and neither may reach the other through its installed name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO


def _absolute_imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("package", ["server", "client"])
def test_transports_import_themselves_relatively_and_never_each_other(package: str) -> None:
    offenders = []
    for path in sorted((REPO / package).rglob("*.py")):
        for name in _absolute_imports(path):
            root = name.split(".")[:2]
            if root[0] in ("server", "client") or root in (["fedseed", "server"], ["fedseed", "client"]):
                offenders.append(f"{path.relative_to(REPO)}: import {name}")
    assert offenders == []


def test_core_never_names_a_transport() -> None:
    # fedseed/proto is generated gRPC code: the one part of the package that needs grpc.
    offenders = [
        f"{path.relative_to(REPO)}: import {name}"
        for path in sorted((REPO / "fedseed").rglob("*.py"))
        if path.parent.name != "proto"
        for name in _absolute_imports(path)
        if name.split(".")[0] in ("grpc", "flwr") or name.startswith(("fedseed.server", "fedseed.client"))
    ]
    assert offenders == []


def test_no_generic_top_level_server_or_client_is_installed() -> None:
    import importlib.util

    import fedseed.client
    import fedseed.server

    assert Path(fedseed.server.__file__).parent == REPO / "server"
    assert Path(fedseed.client.__file__).parent == REPO / "client"
    for name in ("server", "client"):
        spec = importlib.util.find_spec(name)
        # From the repo root, pytest may see the folder itself; never a site-packages install.
        assert spec is None or "site-packages" not in str(spec.origin)


def test_no_import_cycles_anywhere_in_the_package() -> None:
    # Every import statement counts, the ones inside functions too (grimp, import-linter's
    # graph): a cycle is a direct import a -> b with a chain of imports back from b to a.
    import grimp

    graph = grimp.build_graph("fedseed")
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if imported != importer and back:
                cycles.append(" -> ".join((importer, *back)))
    assert cycles == []


def test_the_layers_contract_fails_when_a_lower_layer_imports_a_higher_one(tmp_path: Path) -> None:
    # A copy of the packages with one upward import: the engine's ledger importing the simulator.
    import shutil
    import subprocess
    import sys

    for package in ("fedseed", "server", "client"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    lint = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"]
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    clean = subprocess.run(lint, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert clean.returncode == 0, clean.stdout[-2000:]
    ledger = tmp_path / "fedseed" / "ledger.py"
    ledger.write_text(ledger.read_text() + "\nfrom fedseed import simulate  # noqa\n")
    broken = subprocess.run(lint, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert broken.returncode != 0 and "the core's layers" in broken.stdout and "BROKEN" in broken.stdout
    assert "fedseed.ledger -> fedseed.simulate" in broken.stdout
