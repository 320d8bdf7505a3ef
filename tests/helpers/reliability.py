"""pytest plugin: the reliability table in docs/reliability.md, generated from the fault tests.

A test that injects a fault marks itself with its class and how it ends,
one of the outcomes listed in ``OUTCOMES`` below::

    @pytest.mark.fault("tracking faults", "synced")

and, where a run or its metrics could be lost, measures the loss with the
``lost`` fixture (``lost.record(runs=..., metrics=...)``) and asserts it is
zero. Each test item is one case (a hypothesis test says how many examples
it tries with ``cases=``). When a session ran every fault test -- the whole
suite or at least every test that carries the marker, not a ``-k``/``-m``
subset -- the table is written to ``docs/reliability.md``: per class the
cases tried, how they ended, and the runs and metrics lost. Its content
depends only on the tests (no times, no dates), so a rerun changes nothing.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mnist_np.common.paths import PROJECT_ROOT

REPORT = PROJECT_ROOT / "docs" / "reliability.md"
# The fault classes, in table order, and how their cases may end (marker key -> what the table says).
OUTCOMES: dict[str, dict[str, str]] = {
    "bad config": {
        "refused": "refused before anything was created, in one line naming the key, the value and what is allowed",
        "exit 2": "scripts/train.py: exit 2 with that one line; no store, no run, no output",
    },
    "bad data": {
        "DataError": "refused with one error naming the file and what is wrong; nothing allocated from a forged size",
        "next source": "the bad copy reported with its path and set aside (cache) or skipped (data.dir, mirror); the "
                       "next source used; no partial file left",
        "all sources": "no source works: one error listing every source tried and how to point data.dir at local files",
    },
    "training faults": {
        "FAILED": "the run ended FAILED with its reason (a NaN names the epoch and batch)",
        "KILLED": "Ctrl-C: the run ended KILLED, exit 130 with one line naming its checkpoint (or that it has none "
                  "yet) and resume=<run id>",
        "warning": "a failing plot left the run FINISHED with a warnings tag",
        "file kept": "full disk mid-write: the previous checkpoint or weights file intact, no temp file left",
        "resumed": "the run resumed from its last checkpoint and ended FINISHED with every epoch once",
        "reaped": "killed from outside (kill -9): closed FAILED by the next run or the sweep, never left RUNNING",
        "search goes on": "failing trials of a guided search (diverged, invalid value): told FAILED, the study ran all "
                          "n_trials, one error line",
        "refused": "a second command on a run that is still training (resume=<run>): refused in one line naming the "
                   "live process (host, pid), exit 2, nothing touched; the live run ended FINISHED with one "
                   "metric point per epoch",
        "one winner": "two resume= commands racing for the same killed run: exactly one trained it to FINISHED, every "
                      "epoch once; the other was refused in one line naming the winner, exit 2",
        "atomic": "every file a later command reads (config, summary, environment, checkpoints, weights, run and sweep "
                  "files) written to a temporary file and renamed, never opened in place; the train.log artifact ends "
                  "with the run's last line",
    },
    "sweep members": {
        "recorded": "a member stopped before its run existed (data not obtainable, its store unreachable) or by its "
                    "worker process SIGKILLed: a FAILED child with its reason, counted in the summary, `error: N of M "
                    "sweep members failed`, exit 1",
    },
    "sweep killed": {
        "resumed": "a grid sweep killed with kill -9 (basic and joblib launchers) mid-member, then --multirun resume=: "
                   "the same parent, finished members kept untouched, the interrupted ones resumed into their own "
                   "runs, every member FINISHED once, bit-identical to the same config trained uninterrupted",
        "run found": "a member (or a run) killed between MLflow's making its run and writing mlflow_run.json, then "
                     "the sweep continued (or resume=<dir>): its run found by its output dir and trained to FINISHED "
                     "with every epoch once, never a second run",
        "search resumed": "a guided search killed with kill -9, then resume=: the same study and parent, exactly "
                          "n_trials trials, nothing left RUNNING",
        "refused": "--multirun resume= of a sweep whose process still runs: refused in one line naming it (host, pid), "
                   "exit 2; the sweep finished untouched",
        "preempted": "a Slurm member preempted on a real one-node Slurm (SIGTERM, then SIGUSR2): submitit requeued it, "
                     "it resumed from its checkpoint into its own MLflow run, FINISHED with every epoch once, "
                     "bit-identical to an uninterrupted member",
    },
    "tracking faults": {
        "fail fast": "server down at the start: one line within seconds, before any data or run",
        "synced": "server killed mid-run: the training finished, scripts/sync.py completed the same run, a "
                  "second sync sent nothing",
        "caught up": "server back before the end: the run uploaded what it missed by itself",
        "new run": "a store without the run: scripts/sync.py made one complete new run, once",
        "sweep unsynced": "server killed during the sweep's closing calls: no traceback, one line naming sync.py; "
                          "the parent closed later",
        "sweep copied": "a sweep synced into another store: one parent there, every member its child, summarised; "
                        "syncing again sent nothing",
        "one line": "scripts/sync.py on a wrong folder or a down server: one line, exit 2 or 1",
        "store race": "parallel members racing in the store: retried or closed, one consistent record",
    },
    "load": {
        "complete": "8 parallel members (on a fresh SQLite store, and against a real mlflow server): all FINISHED, "
                    "every per-epoch metric present",
        "restarted": "server SIGKILLed and restarted mid-sweep, then scripts/sync.py: all 8 members "
                     "FINISHED, nothing missing",
        "postgresql": "a team server on PostgreSQL SIGKILLed and restarted mid-sweep (4 joblib members), then "
                      "scripts/sync.py: all FINISHED, nothing missing",
    },
    "security": {
        "source": "source check: every np.load passes allow_pickle=False; no pickle, eval, exec, "
                  "yaml.load or instantiate",
        "refused": "a pickled or tampered file from a run refused in one line; its payload never ran",
        "loopback": "make ui and the project's servers bind 127.0.0.1 unless a host is passed; conf/ names no code",
        "logins": "the docs' basic-auth server: no login, a wrong password or another user's experiment refused in one "
                  "line; a user's run FINISHED",
        "not an image": "predict: a file that is not an image refused in one line naming it and what is accepted",
    },
}
CLASSES = tuple(OUTCOMES)


@dataclass
class Lost:
    """What a fault test measured as lost (``None``: the test does not measure it).

    Kept on the test item too (``user_properties``), so that it reaches the
    process that writes the table in the test's report, also from a
    pytest-xdist worker.
    """

    runs: int | None = None
    metrics: int | None = None
    item: pytest.Item | None = field(default=None, repr=False, compare=False)

    def record(self, runs: int | None = None, metrics: int | None = None) -> None:
        if runs is not None:
            self.runs = (self.runs or 0) + runs
        if metrics is not None:
            self.metrics = (self.metrics or 0) + metrics
        if self.item is not None:
            props = [p for p in self.item.user_properties if p[0] != LOST]
            self.item.user_properties[:] = [*props, (LOST, [self.runs, self.metrics])]


@dataclass
class Case:
    cls: str
    outcome: str
    cases: int
    result: str = "not run"  # passed, failed, skipped
    lost: Lost = field(default_factory=Lost)


# What a fault test's report carries (user_properties): its class and outcome, what it lost, and how many
# fault tests the suite holds (counted at collection, before -k/-m deselect any).
FAULT, LOST, TOTAL = "reliability.fault", "reliability.lost", "reliability.total"


class ReliabilityPlugin:
    """Collects the fault tests' outcomes from their reports -- in this process, or from pytest-xdist's workers."""

    def __init__(self) -> None:
        self.cases: dict[str, Case] = {}
        self.total: int | None = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        total = sum(item.get_closest_marker("fault") is not None for item in items)
        for item in items:
            mark = item.get_closest_marker("fault")
            if mark is None:
                continue
            cls = mark.args[0]
            outcome = mark.kwargs.get("outcome") or (mark.args[1] if len(mark.args) > 1 else "")
            if outcome not in OUTCOMES.get(cls, {}):
                known = ", ".join(f"{c}: {sorted(o)}" for c, o in OUTCOMES.items())
                raise pytest.UsageError(f"{item.nodeid}: fault({cls!r}, {outcome!r}) is not a known class and "
                                        f"outcome; known: {known}")
            item.user_properties += [(FAULT, [cls, outcome, int(mark.kwargs.get("cases", 1))]), (TOTAL, total)]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if FAULT not in props:
            return
        case = self.cases.setdefault(report.nodeid, Case(*props[FAULT]))
        self.total = props.get(TOTAL, self.total)
        if LOST in props:
            case.lost = Lost(*props[LOST])
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            case.result = report.outcome
        elif report.when == "teardown" and report.outcome == "failed":
            case.result = "failed"

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        config = session.config
        if hasattr(config, "workerinput") or config.getoption("collectonly") or not self.cases:
            return  # a pytest-xdist worker: the controller writes the table from every worker's reports
        if config.getoption("keyword") or config.getoption("markexpr") or not _whole_suite(config):
            return  # a subset of the suite (-k, -m, chosen files): the table would say less than it should
        if len(self.cases) != self.total or any(c.result == "not run" for c in self.cases.values()):
            return  # some fault test did not run (-x stopped the session, say)
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(render(list(self.cases.values())))


def _whole_suite(config: pytest.Config) -> bool:
    """True when pytest was pointed at the test folder (or the project) rather than chosen files."""
    tests = Path(config.rootpath) / "tests"
    args = [Path(a.split("::")[0]).resolve() for a in config.args] or [tests]
    return all(a in (tests, Path(config.rootpath)) for a in args)


def render(cases: list[Case]) -> str:
    by_class: dict[str, list[Case]] = defaultdict(list)
    for c in cases:
        by_class[c.cls].append(c)
    order = [c for c in CLASSES if c in by_class]
    lines = [
        "# Reliability",
        "",
        "Generated by the test suite (`make test`; the plugin is `tests/helpers/reliability.py`) from",
        "the tests that inject a fault: each fault class, how many cases were tried, how they",
        "ended, and how many runs and metric values were lost. A dash means no test of that",
        "class has a run or metrics to lose (a bad config or bad data stops before any run",
        "exists). Do not edit by hand: run the whole suite and commit the result.",
        "",
        "| fault class | cases tried | how they ended | runs lost | metrics lost |",
        "|---|---|---|---|---|",
    ]
    total = Counter()
    for cls in order:
        group = by_class[cls]
        outcomes: Counter[str] = Counter()
        for c in group:
            text = OUTCOMES[cls][c.outcome]
            label = text if c.result == "passed" else f"TEST {c.result.upper()}: {text}"
            outcomes[label] += c.cases
        ended = "; ".join(f"{n} × {label}" for label, n in sorted(outcomes.items(), key=lambda kv: (-kv[1], kv[0])))
        tried = sum(c.cases for c in group)
        runs = _sum(c.lost.runs for c in group)
        metrics = _sum(c.lost.metrics for c in group)
        total["cases"] += tried
        lines.append(f"| {cls} | {tried} | {ended} | {runs} | {metrics} |")
    failed = sum(c.result != "passed" for c in cases)
    lines += ["", f"{total['cases']} cases in {len(cases)} tests; tests that did not pass: {failed}.", ""]
    return "\n".join(lines)


def _sum(values: object) -> str:
    measured = [v for v in values if v is not None]  # type: ignore[attr-defined]
    return str(sum(measured)) if measured else "–"


_plugin = ReliabilityPlugin()


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_plugin, "reliability-table")


@pytest.fixture
def lost(request: pytest.FixtureRequest) -> Lost:
    """Where a fault test records what it measured as lost (it must also assert zero)."""
    return Lost(item=request.node)
