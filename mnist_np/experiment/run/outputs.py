"""A run's own files, beside whatever MLflow gets: its config, one line of metrics per epoch, its log.

Everything a run logs to MLflow also sits in its output dir, so a tracking
failure never loses a run.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Iterator

from omegaconf import OmegaConf

from mnist_np.common.files import atomic_write_bytes, atomic_write_text
from mnist_np.nn.model import MLP
from mnist_np.train.loop import Callback, TrainSettings

log = logging.getLogger(__name__)
# As conf/config.yaml's hydra.job_logging formats train.log.
LOG_FORMAT, LOG_DATEFMT = "[%(asctime)s][%(levelname)s] %(message)s", "%H:%M:%S"


class EpochLogger(Callback):
    """One short log line per epoch, and ``metrics.jsonl`` in the output dir (nothing is lost)."""

    def __init__(self, path: Path, epochs: int, append: bool = False) -> None:
        self.path = path
        self.epochs = epochs
        path.parent.mkdir(parents=True, exist_ok=True)
        if not append:
            atomic_write_text(path, "")

    @staticmethod
    def rewrite(path: Path, history: list[dict[str, float]]) -> None:
        """``metrics.jsonl`` holding exactly ``history`` (one line per epoch, from epoch 1), replaced atomically."""
        atomic_write_text(path, "".join(json.dumps({"epoch": i, **m}) + "\n" for i, m in enumerate(history, start=1)))

    def on_train_start(self, model: MLP, settings: TrainSettings) -> None:
        log.info("training %s for %d epochs, batch %d", "-".join(map(str, model.sizes)), self.epochs,
                 settings.batch_size)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], model: MLP, is_best: bool) -> None:
        m = metrics
        log.info(
            "epoch %*d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f | lr %.3g | %.2fs%s",
            len(str(self.epochs)), epoch, self.epochs, m["train_loss"], m["train_accuracy"],
            m["val_loss"], m["val_accuracy"], m["lr"], m["epoch_seconds"], " *" if is_best else "",
        )
        with self.path.open("a") as f:
            f.write(json.dumps({"epoch": epoch, **m}) + "\n")


def write_config_files(output_dir: Path, config_yaml: str, overrides: list[str]) -> None:
    """``config/``: the resolved config, the overrides and Hydra's own config (if Hydra ran us)."""
    cfg_dir = output_dir / "config"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    # resume= and reproduce read them back: atomic, like every file a later command reads.
    atomic_write_text(cfg_dir / "config.yaml", config_yaml)
    atomic_write_text(cfg_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    hydra_yaml = output_dir / ".hydra" / "hydra.yaml"
    if hydra_yaml.exists():
        atomic_write_bytes(cfg_dir / "hydra.yaml", hydra_yaml.read_bytes())


@contextlib.contextmanager
def log_also_to(path: Path) -> Iterator[None]:
    """Append this process's log records to ``path`` as well, in the format of its log file, while inside.

    Nothing is added when a handler already writes to ``path`` (a run's own
    Hydra job log).
    """
    root = logging.getLogger()
    files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    if any(Path(h.baseFilename) == path.resolve() for h in files):
        yield
        return
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(files[0].formatter if files and files[0].formatter
                         else logging.Formatter(LOG_FORMAT, LOG_DATEFMT))
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
