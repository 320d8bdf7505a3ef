"""What a run reports back: its result, or how to continue it after Ctrl-C."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RunResult:
    """What a finished run reports back (to scripts, sweepers and tests)."""

    run_id: str
    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def val_accuracy(self) -> float:
        return self.metrics.get("best_val_accuracy", float("nan"))


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run, after the run was closed KILLED; ``str()`` says how to continue it.

    ``checkpoint`` is the newest checkpoint on disk, or None when the run was
    interrupted before its first one was written (then resuming trains it
    from the start, in the same run, and the message says so).
    """

    def __init__(self, run_id: str, checkpoint: Path | None) -> None:
        super().__init__(run_id, checkpoint)
        self.run_id, self.checkpoint = run_id, checkpoint

    @property
    def advice(self) -> str:
        """What to do next (also the run's ``failure_reason`` in MLflow)."""
        if self.checkpoint is None:
            return (f"it had no checkpoint yet, so resuming starts it over in the same run: "
                    f"python scripts/train.py resume={self.run_id}")
        return (f"its last checkpoint is {self.checkpoint}; continue it with: "
                f"python scripts/train.py resume={self.run_id}")

    def __str__(self) -> str:
        return f"interrupted: run {self.run_id} is closed KILLED; {self.advice}"
