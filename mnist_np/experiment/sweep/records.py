"""A sweep member's record, read and written from its own output dir: how it fared, and its FAILED child when it failed.

A member records itself: its run ends FINISHED, or FAILED with its reason,
in MLflow and in its journal. What it cannot record, someone records for it
(:mod:`~mnist_np.experiment.sweep.members` in its own process,
:mod:`~mnist_np.experiment.sweep.launch` in the sweep's), always from the
member's output dir -- journal first, then MLflow -- so that nothing
depends on MLflow answering at that moment: a record MLflow did not get
waits in the journal until the sweep's summary sends it
(:func:`unrecorded_members`), or ``scripts/sync.py <sweep dir>``.

A member that failed for want of something outside it (``retry`` in its
journal: its data, its store, its process) is run again by ``--multirun
resume=``, into the same MLflow run; an invalid config or a diverged loss
would fail the same way again and is kept (:func:`resumable`).
"""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from mnist_np.common import locks
from mnist_np.common.errors import error_line
from mnist_np.common.files import atomic_write_text
from mnist_np.experiment.config.builders import default_run_name
from mnist_np.experiment.sweep.info import SweepInfo, member_run_name
from mnist_np.tracking.conventions import OUTPUT_DIR_TAG
from mnist_np.tracking.journal import JOURNAL_FILE, Journal, read_journal, read_run_file
from mnist_np.tracking.sync import sync_output_dir
from mnist_np.tracking.tracker import flatten

log = logging.getLogger(__name__)


class Fate(str, Enum):
    """What a member's output dir says of it."""

    ENDED = "ended"  # its journal says how its run ended
    ALIVE = "alive"  # a live process holds its lock
    DIED = "died"  # its run started and never ended, and no process holds it
    DIED_EARLY = "died early"  # it started (its dir exists) and died before its run did
    NOT_STARTED = "not started"  # no dir: the launcher never started it


def fate(output_dir: Path) -> Fate:
    """The member in ``output_dir``, as its files and its lock tell."""
    if not output_dir.is_dir():
        return Fate.NOT_STARTED
    if locks.holder(output_dir) is not None:
        return Fate.ALIVE
    journal = output_dir / JOURNAL_FILE
    state = read_journal(journal) if journal.is_file() else None
    if state is not None and state.end is not None:
        return Fate.ENDED
    if state is not None and state.start is not None:
        return Fate.DIED
    return Fate.DIED_EARLY


def record_failure(info: SweepInfo, job_num: int, overrides: Sequence[str], output_dir: Path, cfg: DictConfig | None,
                   reason: str, retry: bool, base_name: str | None = None) -> None:
    """Record member ``job_num`` as FAILED with ``reason``: in its journal first, then as a child run in MLflow.

    A run that already ended is left as it is. One that started and never
    ended gets its end. A member that never had a run gets one that starts
    and ends at once, named and tagged as its run would have been, with its
    config as params (and, with ``retry``, saved in ``config/`` so that a
    continued sweep can train it). If MLflow does not answer, the record
    waits in the journal for the sweep's end or ``scripts/sync.py``.
    """
    journal = output_dir / JOURNAL_FILE
    state = read_journal(journal) if journal.is_file() else None
    if state is not None and state.end is not None:
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    notes = Journal(journal)
    if state is None or state.start is None:
        resolved = _resolved(cfg)
        if retry and resolved is not None and not (output_dir / "config" / "config.yaml").is_file():
            atomic_write_text(output_dir / "config" / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
        name = _member_name(cfg, base_name, overrides, info)
        tags = {**info.member_tags(job_num), "overrides": " ".join(overrides), OUTPUT_DIR_TAG: str(output_dir),
                "mlflow.source.name": "scripts/train.py"}
        notes.note_start(name, flatten(resolved or {}), tags, info.experiment_name, info.tracking_uri)
    notes.note_end("FAILED", reason[:8000], retry=retry)
    send_record(info, output_dir)


def send_record(info: SweepInfo, output_dir: Path) -> bool:
    """Send member ``output_dir``'s journal to the sweep's store, as a child of its parent; False if MLflow is down."""
    try:
        report = sync_output_dir(output_dir, info.tracking_uri, info.parent_run_id)
        log.info("recorded sweep member %s in MLflow: %s", output_dir.name, report.line())
        return True
    except Exception as e:  # noqa: BLE001 -- the record is safe in the journal; the sweep's end sends it
        log.warning("sweep member %s is recorded in %s but not in MLflow yet (%s); the sweep's summary sends it",
                    output_dir.name, output_dir, error_line(e))
        return False


def _resolved(cfg: DictConfig | None) -> dict[str, Any] | None:
    """The config as plain data (without ``hydra``), or None when it cannot be resolved."""
    if cfg is None:
        return None
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 -- an unresolvable config is recorded without params
        return None
    if not isinstance(resolved, dict):
        return None
    resolved.pop("hydra", None)
    return resolved


def _member_name(cfg: DictConfig | None, base_name: str | None, overrides: Sequence[str], info: SweepInfo) -> str:
    """The name its run would have had (``base_name``, e.g. ``invalid-config``, when the config cannot give one)."""
    base = base_name
    if base is None:
        try:
            base = (cfg.mlflow.run_name if cfg is not None else None) or default_run_name(cfg)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 -- a config too broken to name: still recorded
            base = "failed"
    explicit = base_name is not None or bool(cfg is not None and cfg.get("mlflow", {}).get("run_name"))
    return member_run_name(str(base), list(overrides), info.swept, explicit_base=explicit)


def unrecorded_members(sweep_dir: Path) -> list[Path]:
    """Member dirs whose journal holds a run that MLflow never heard of (no run file): records waiting to be sent."""
    return [journal.parent for journal in sorted(Path(sweep_dir).glob(f"*/{JOURNAL_FILE}"))
            if not read_run_file(journal.parent) and locks.holder(journal.parent) is None]


def resumable(output_dir: Path) -> bool:
    """Whether ``--multirun resume=`` would train member ``output_dir`` (again): killed, interrupted, or failed for want
    of something."""
    journal = output_dir / JOURNAL_FILE
    if not journal.is_file():
        return output_dir.is_dir()
    end = read_journal(journal).end
    return end is None or end.get("status") == "KILLED" or bool(end.get("retry"))
