"""The suite's own set-up: what `make test` relies on to run in a process per core."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest


@pytest.mark.xdist_group("suite-probe")
def test_tests_marked_to_share_a_worker_are_grouped(request: pytest.FixtureRequest) -> None:
    """Under ``pytest -n N --dist loadgroup`` (``make test``) a test of a group carries the group in its id.

    That is how pytest-xdist sends a group's tests to one worker, so that a costly fixture they share (a
    PostgreSQL or Slurm cluster, a server with a browser: tests/conftest.py) starts once. Some pytest and
    pytest-xdist versions lose it without a word (pytest-xdist issue 1386): then this fails.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ or not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run by pytest-xdist with --dist loadgroup")
    assert request.node.nodeid.endswith("@suite-probe"), request.node.nodeid


def test_every_script_run_in_process_is_also_run_as_a_command() -> None:
    """``helpers.scripts.run_script`` spares a subprocess where a script's output is the point; the command line
    itself (argument parsing as a user meets it, the interpreter's start, its exit status) must stay tested by at
    least one test that runs ``scripts/<name>.py`` as a command."""
    tests = {p: p.read_text() for p in Path(__file__).parent.glob("test_*.py")}
    in_process = {name for text in tests.values() for name in re.findall(r'run_script\("(\w+)"', text)}
    assert in_process, "no test uses run_script: this check sees nothing"
    as_command = {name for name in in_process for text in tests.values()
                  if re.search(rf'"{name}\.py"', text) and re.search(r"subprocess\.(run|Popen)\(", text)}
    assert in_process - as_command == set()
