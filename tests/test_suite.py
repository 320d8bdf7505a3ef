"""The suite's own set-up: what `make test` relies on to run in a process per core."""

from __future__ import annotations

import os

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
