"""Full training state on disk, for resuming an interrupted run bit for bit.

A checkpoint is an ``.npz`` of plain arrays (never pickled objects) written
atomically, so a crash mid-write keeps the previous one; :class:`Checkpointer`
is the training callback that writes one every few epochs and keeps the
newest few.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mnist_np.nn.model import MLP
from mnist_np.nn.optim import Optimizer
from mnist_np.nn.weights import CONFIG_KEY, open_npz, save_npz
from mnist_np.train.loop import Callback, FitResult

STATE_VERSION = 1


@dataclass
class TrainingState:
    """Everything needed to continue a training bit for bit after ``epoch``.

    In the file: ``param/W1 ...``, ``best/W1 ...``, ``optim/<name>`` arrays, and
    JSON text arrays for the generators' states, the metric history and the
    small scalars -- no pickled objects anywhere.
    """

    epoch: int
    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    rng_states: dict[str, dict]
    result: FitResult
    config_yaml: str
    run_id: str = ""


def save_state(path: str | os.PathLike[str], state: TrainingState) -> Path:
    """Write ``state`` atomically (the previous checkpoint survives a crash mid-write)."""
    r = state.result
    arrays: dict[str, np.ndarray] = {f"param/{k}": v for k, v in state.params.items()}
    arrays.update({f"best/{k}": v for k, v in r.best_params.items()})
    arrays.update({f"optim/{k}": v for k, v in state.optimizer.items()})
    meta = {
        "version": STATE_VERSION,
        "epoch": state.epoch,
        "run_id": state.run_id,
        "rng_states": state.rng_states,
        "history": r.history,
        "best_epoch": r.best_epoch,
        "best_score": r.best_score if math.isfinite(r.best_score) else None,
        "since_best": r.since_best,
        "stopped_early": r.stopped_early,
        "stop_reason": r.stop_reason,
    }
    arrays["meta"] = np.array(json.dumps(meta))
    arrays[CONFIG_KEY] = np.array(state.config_yaml)
    return save_npz(path, arrays)


def load_state(path: str | os.PathLike[str]) -> TrainingState:
    """Read a checkpoint written by :func:`save_state`; never unpickles."""
    with open_npz(path) as f:
        meta = json.loads(str(f["meta"]))
        if meta.get("version") != STATE_VERSION:
            raise ValueError(f"{path}: checkpoint version {meta.get('version')} is not {STATE_VERSION}")
        group = lambda prefix: {k[len(prefix):]: f[k] for k in f.files if k.startswith(prefix)}  # noqa: E731
        params, best, optim = group("param/"), group("best/"), group("optim/")
        config_yaml = str(f[CONFIG_KEY])
    result = FitResult(
        history=meta["history"],
        best_epoch=meta["best_epoch"],
        best_params=best,
        stopped_early=meta["stopped_early"],
        stop_reason=meta.get("stop_reason"),  # absent from checkpoints written before it existed
        best_score=-math.inf if meta["best_score"] is None else meta["best_score"],
        since_best=meta["since_best"],
    )
    return TrainingState(meta["epoch"], params, optim, meta["rng_states"], result, config_yaml, meta["run_id"])


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The newest ``epoch_NNNN.npz`` in ``folder`` (by epoch number), if any."""
    found = sorted(Path(folder).glob("epoch_*.npz"))
    return found[-1] if found else None


class Checkpointer(Callback):
    """Training callback: the full state after every ``every`` epochs, keeping the last ``keep``.

    The file of the last epoch is always written, so a finished run can
    tell it is finished.
    """

    def __init__(
        self,
        folder: Path,
        optimizer: Optimizer,
        rngs: dict[str, np.random.Generator],
        config_yaml: str,
        run_id: str,
        epochs: int,
        every: int = 1,
        keep: int = 2,
        on_saved: Callable[[Path], None] | None = None,
    ) -> None:
        self.folder, self.optimizer, self.rngs = folder, optimizer, rngs
        self.config_yaml, self.run_id, self.epochs = config_yaml, run_id, epochs
        self.every, self.keep, self.on_saved = every, max(1, keep), on_saved
        self.result: FitResult | None = None

    def bind(self, result: FitResult) -> None:
        """The FitResult ``fit`` fills in (its history and best weights go into every checkpoint)."""
        self.result = result

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], model: MLP, is_best: bool) -> None:
        assert self.result is not None, "call bind(result) before fit"
        if epoch % self.every and epoch != self.epochs and not self.result.stopped_early:
            return
        state = TrainingState(
            epoch=epoch,
            params=model.params,
            optimizer=self.optimizer.state_dict(),
            rng_states={k: g.bit_generator.state for k, g in self.rngs.items()},
            result=self.result,
            config_yaml=self.config_yaml,
            run_id=self.run_id,
        )
        path = save_state(self.folder / f"epoch_{epoch:04d}.npz", state)
        for old in sorted(self.folder.glob("epoch_*.npz"))[: -self.keep]:
            old.unlink(missing_ok=True)
        if self.on_saved is not None:
            self.on_saved(path)


def restore_rngs(rngs: dict[str, np.random.Generator], states: dict[str, dict]) -> None:
    """Put saved bit-generator states back into ``rngs`` (same names).

    A stream the checkpoint lacks is newer than the checkpoint (``augment``),
    so the run that wrote it never drew from it: it stays as freshly seeded.
    """
    for name, gen in rngs.items():
        if name in states:
            gen.bit_generator.state = states[name]
