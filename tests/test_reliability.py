"""The reliability table (tests/helpers/reliability.py): what it says for passed, failed and measured cases."""

from __future__ import annotations

from helpers.reliability import OUTCOMES, Case, Lost, render


def test_table_counts_cases_outcomes_and_losses() -> None:
    cases = [
        Case("bad config", "refused", 1, "passed"),
        Case("bad config", "refused", 1, "passed"),
        Case("bad data", "DataError", 300, "passed"),
        Case("load", "complete", 1, "passed", Lost(runs=0, metrics=0)),
        Case("load", "restarted", 1, "failed", Lost(runs=1, metrics=12)),
    ]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in render(cases).splitlines() if line.startswith("| ")}
    assert rows["bad config"] == f"| bad config | 2 | 2 × {OUTCOMES['bad config']['refused']} | – | – |"
    assert rows["bad data"].startswith("| bad data | 300 | 300 × ")
    load = rows["load"]
    assert load.startswith("| load | 2 | ") and load.endswith(" | 1 | 12 |")
    assert f"1 × TEST FAILED: {OUTCOMES['load']['restarted']}" in load
    assert "304 cases in 5 tests; tests that did not pass: 1." in render(cases)

