"""``run(cfg)``: a validated config -> data, model, training loop, tracking.

This is the one place where the config meets the numeric core. Order matters:
validate first (nothing is created for a bad config), open the tracking store
(fail fast if it is unreachable), load the data, and only then open the
MLflow run, so every run that exists has a real training behind it. The run
is always closed -- FINISHED, FAILED with its reason, or KILLED on Ctrl-C --
and everything it logs is also written to its output dir.

Once the run exists, MLflow can no longer stop it: the tracker fails soft
(see :mod:`mnist_np.tracking`), and if the server came back by the end the
run uploads what it missed itself (:mod:`mnist_np.sync`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mnist_np import checkpoint, data, registry
from mnist_np.config import PROJECT_ROOT, ConfigError, validate
from mnist_np.model import MLP
from mnist_np.sync import RUN_FILE, write_run_file
from mnist_np.training import FitResult, TrainSettings, fit, score_logits

log = logging.getLogger(__name__)
# As conf/config.yaml's hydra.job_logging formats train.log.
LOG_FORMAT, LOG_DATEFMT = "[%(asctime)s][%(levelname)s] %(message)s", "%H:%M:%S"
KILLED_REASON = "the run's process ended without closing it (killed from outside: kill -9, out of memory, node lost)"


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
        return f"its last checkpoint is {self.checkpoint}; continue it with: python scripts/train.py resume={self.run_id}"

    def __str__(self) -> str:
        return f"interrupted: run {self.run_id} is closed KILLED; {self.advice}"


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


def default_run_name(cfg: DictConfig) -> str:
    """Readable run name from the config, e.g. ``mlp128-sgd-lr0.1-bs128`` (``mlp256x2-...`` for 2 layers)."""
    m, o, t = cfg.model, cfg.optimizer, cfg.trainer
    layers = f"x{m.num_hidden_layers}" if m.num_hidden_layers != 1 else ""
    data_prefix = "" if cfg.data.name == "mnist" else f"{cfg.data.name}-"
    return f"{data_prefix}mlp{m.hidden_size}{layers}-{o.name}-lr{o.lr:g}-bs{t.batch_size}"


def rng_streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators for init, shuffling and dropout, all from the run's seed.

    Spawning (rather than seeding three generators with seed, seed+1, ...)
    gives streams that are statistically independent by construction.
    """
    names = ("init", "shuffle", "dropout")
    children = np.random.SeedSequence(seed).spawn(len(names))
    return {n: np.random.default_rng(s) for n, s in zip(names, children)}


def build_model(cfg: DictConfig, rng: np.random.Generator, dtype: np.dtype) -> MLP:
    """The network the config describes: ``784 -> hidden_size x num_hidden_layers -> 10``."""
    m = cfg.model
    activation = registry.lookup(registry.ACTIVATIONS, m.activation, "model.activation")(negative_slope=m.negative_slope)
    init = registry.lookup(registry.INITIALIZERS, m.init, "model.init")
    sizes = [784] + [m.hidden_size] * m.num_hidden_layers + [10]
    return MLP.initialize(sizes, activation, init, rng, init_scale=m.init_scale, dropout=m.dropout, dtype=dtype)


def build_optimizer(cfg: DictConfig) -> Any:
    o = OmegaConf.to_container(cfg.optimizer, resolve=True)
    assert isinstance(o, dict)
    factory = registry.lookup(registry.OPTIMIZERS, o.pop("name"), "optimizer.name")
    o.pop("lr")
    if "betas" in o:
        o["betas"] = tuple(o["betas"])
    return factory(**o)


def build_schedule(cfg: DictConfig) -> Any:
    s = cfg.schedule
    return registry.build_schedule(
        s.name,
        base_lr=cfg.optimizer.lr,
        total_epochs=cfg.trainer.epochs,
        warmup_epochs=s.warmup_epochs,
        step_size=s.step_size,
        gamma=s.gamma,
        min_lr=s.min_lr,
    )


def environment_tags() -> dict[str, str]:
    """Versions and threads that decide whether two runs can be bit-identical."""
    tags = {
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        from threadpoolctl import threadpool_info

        blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if blas:
            b = blas[0]
            tags["blas"] = f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')})"
            tags["blas_threads"] = str(b.get("num_threads"))
    except Exception:  # threadpoolctl is informative only
        pass
    for var in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        if os.environ.get(var):
            tags[f"env.{var}"] = os.environ[var]
    return tags


def git_tags(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """``mlflow.source.git.commit`` and whether the tree had uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10)
        return {"mlflow.source.git.commit": commit.stdout.strip(), "git_dirty": str(bool(dirty.stdout.strip())).lower()}
    except (OSError, subprocess.SubprocessError):
        return {}


@dataclass
class HydraContext:
    """What Hydra tells a job about itself (all empty outside ``@hydra.main``)."""

    output_dir: Path | None = None
    overrides: list[str] = field(default_factory=list)
    sweep_dir: Path | None = None  # set for --multirun members only
    job_num: int | None = None
    launcher: dict[str, Any] = field(default_factory=dict)


def hydra_context() -> HydraContext:
    """The Hydra output dir, overrides, and sweep membership of the current job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return HydraContext()
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    launcher = OmegaConf.to_container(hc.launcher, resolve=False) if hc.launcher else {}
    return HydraContext(
        output_dir=Path(hc.runtime.output_dir),
        overrides=list(hc.overrides.task),
        sweep_dir=Path(hc.sweep.dir) if multirun else None,
        job_num=hc.job.num if multirun else None,
        launcher=launcher if isinstance(launcher, dict) else {},
    )


def blas_threads(cfg: DictConfig, ctx: HydraContext) -> int:
    """BLAS threads for this run: ``trainer.threads``, else the cores shared among parallel workers.

    joblib's ``n_jobs`` workers each get ``cores // n_jobs`` (at least 1) so a
    parallel sweep does not oversubscribe the machine; submitit jobs get
    their ``cpus_per_task`` (1 when unset), as a cluster scheduler would.
    """
    if cfg.trainer.threads:
        return int(cfg.trainer.threads)
    cores = os.cpu_count() or 1
    target = str(ctx.launcher.get("_target_", ""))
    if "n_jobs" in ctx.launcher and "joblib" in target.lower():
        n_jobs = int(ctx.launcher["n_jobs"])
        workers = n_jobs if n_jobs > 0 else max(cores + 1 + n_jobs, 1)
        return max(1, cores // workers)
    if "submitit" in target.lower():
        return int(ctx.launcher.get("cpus_per_task") or 1)
    return cores


class EpochLogger:
    """One short log line per epoch, and ``metrics.jsonl`` in the output dir (nothing is lost)."""

    def __init__(self, path: Path, epochs: int, append: bool = False) -> None:
        self.path = path
        self.epochs = epochs
        path.parent.mkdir(parents=True, exist_ok=True)
        if not append:
            path.write_text("")

    @staticmethod
    def rewrite(path: Path, history: list[dict[str, float]]) -> None:
        """``metrics.jsonl`` holding exactly ``history`` (one line per epoch, from epoch 1)."""
        path.write_text("".join(json.dumps({"epoch": i, **m}) + "\n" for i, m in enumerate(history, start=1)))

    def on_train_start(self, model: MLP, settings: TrainSettings) -> None:
        log.info("training %s for %d epochs, batch %d", "-".join(map(str, model.sizes)), self.epochs, settings.batch_size)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], model: MLP, is_best: bool) -> None:
        m = metrics
        log.info(
            "epoch %*d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f | lr %.3g | %.2fs%s",
            len(str(self.epochs)), epoch, self.epochs, m["train_loss"], m["train_accuracy"],
            m["val_loss"], m["val_accuracy"], m["lr"], m["epoch_seconds"], " *" if is_best else "",
        )
        with self.path.open("a") as f:
            f.write(json.dumps({"epoch": epoch, **m}) + "\n")

    def on_train_end(self, result: FitResult) -> None:
        pass


def load_splits(cfg: DictConfig) -> tuple[data.RawDataset, data.Splits]:
    """The dataset and its train/val/test split as the config describes them."""
    started = time.perf_counter()
    dtype = np.dtype(cfg.trainer.dtype)
    raw = data.load_dataset(cfg.data.name, data_dir=cfg.data.dir, cache_dir=cfg.data.cache_dir)
    splits = data.make_splits(raw, val_size=cfg.data.val_size, split_seed=cfg.data.split_seed, train_limit=cfg.data.train_limit,
                              dtype=dtype, train_pixels=True)
    log.info("data %s: %s (%.1fs)", cfg.data.name, splits.sizes, time.perf_counter() - started)
    return raw, splits


def run(
    cfg: DictConfig,
    output_dir: Path | None = None,
    overrides: list[str] | None = None,
    extra_tags: dict[str, str] | None = None,
) -> RunResult:
    """Train the network ``cfg`` describes and record everything in MLflow and ``output_dir``.

    With ``cfg.resume`` set, continue that interrupted run instead (see :func:`resume`).

    Args:
        cfg: a composed config (from ``@hydra.main`` or ``hydra.compose``).
        output_dir: where files go; defaults to Hydra's run dir.
        overrides: the command-line overrides to record; defaults to Hydra's.
        extra_tags: more tags for the MLflow run (e.g. ``reproduces``).

    Raises:
        ConfigError: before anything is created, for an invalid config.
        DataError: when no data source works (no MLflow run is created).
        TrainingDiverged: the loss went NaN/inf (the run ends FAILED).
    """
    if cfg.get("resume"):
        return resume(str(cfg.resume), cfg.mlflow.tracking_uri)
    validate(cfg)
    ctx = hydra_context()
    output_dir = Path(output_dir or ctx.output_dir or PROJECT_ROOT / "outputs" / "runs" / datetime.now().strftime("%Y-%m-%d/%H-%M-%S.%f"))
    overrides = ctx.overrides if overrides is None else overrides
    output_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    config_yaml = OmegaConf.to_yaml(OmegaConf.create(resolved))
    _write_config_files(output_dir, config_yaml, overrides)

    from mnist_np.procs import process_identity
    from mnist_np.sweep import SweepInfo, member_run_name
    from mnist_np.tracking import JOURNAL_FILE, PARENT_RUN_TAG, PROCESS_TAG, MlflowTracker, default_tracking_uri, flatten

    tracking_uri = cfg.mlflow.tracking_uri or default_tracking_uri(PROJECT_ROOT)
    # The data (decompression, hashing, conversion: C code that releases the
    # GIL) loads while MLflow opens its store (Python): a second or so saved.
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-data")
    splits_job = loader.submit(load_splits, cfg)
    loader.shutdown(wait=False)
    try:
        tracker = MlflowTracker(tracking_uri, cfg.mlflow.experiment_name, journal=output_dir / JOURNAL_FILE)
        # Runs whose process was killed from outside (kill -9, out of memory) never closed
        # themselves; whoever next uses the experiment on this host closes them.
        tracker.reap_dead_runs(KILLED_REASON)
    except BaseException:
        splits_job.exception()  # the tracking error is the one to report; let the data thread finish first
        raise
    raw, splits = splits_job.result()

    run_name = cfg.mlflow.run_name or default_run_name(cfg)
    sweep = SweepInfo.load(ctx.sweep_dir) if ctx.sweep_dir else None
    sweep_tags = {}
    if sweep is not None:
        run_name = member_run_name(run_name, overrides, sweep.swept, explicit_base=bool(cfg.mlflow.run_name))
        sweep_tags = {PARENT_RUN_TAG: sweep.parent_run_id, "sweep_job_num": str(ctx.job_num)}
    threads = blas_threads(cfg, ctx)
    tags = {
        "overrides": " ".join(overrides),
        "hydra_output_dir": str(output_dir),
        "mlflow.source.name": "scripts/train.py",
        "mlflow.source.type": "LOCAL",
        "test_weights": cfg.trainer.test_weights,
        "host": platform.node(),
        "pid": str(os.getpid()),
        PROCESS_TAG: process_identity(),
        **sweep_tags,
        **git_tags(),
        **(extra_tags or {}),
    }
    run_id = tracker.start(run_name, flatten(resolved), tags)
    write_run_file(output_dir, run_id, tracking_uri, cfg.mlflow.experiment_name)
    log.info("MLflow run %s (%s) in %s, %d BLAS thread(s)", run_name, run_id, tracking_uri, threads)
    return _execute(cfg, tracker, raw, splits, output_dir, config_yaml, threads, state=None, first_time=True)


def resume(target: str, tracking_uri: str | None = None) -> RunResult:
    """Continue an interrupted run, given its MLflow run id or its output dir.

    The run's own saved config is used (checked against the schema first:
    it is data read back from disk), its newest checkpoint restores weights,
    optimizer state, random generators and history, and training goes on in
    the same output dir and the same MLflow run -- which ends FINISHED with
    one metric value per epoch. The final weights are bit-identical to an
    uninterrupted run's on the same machine. A run that already finished is
    left alone.
    """
    from mnist_np.config import load_run_config
    from mnist_np.procs import process_identity
    from mnist_np.tracking import JOURNAL_FILE, PROCESS_TAG, MlflowTracker, default_tracking_uri, run_output_dir

    output_dir = Path(target)
    if not output_dir.is_dir():
        try:
            output_dir = run_output_dir(target, tracking_uri or default_tracking_uri(PROJECT_ROOT))
        except ValueError as e:
            raise ConfigError(f"resume={target!r} is not allowed: {e}; expected a run id in that store or a run's output dir") from None
    run_file = output_dir / RUN_FILE
    config_file = output_dir / "config" / "config.yaml"
    if not run_file.exists() or not config_file.exists():
        raise ConfigError(f"resume={target}: {output_dir} holds no run to resume (expected {RUN_FILE} and config/config.yaml)")
    info = json.loads(run_file.read_text())
    cfg = load_run_config(config_file.read_text(), source=str(config_file))
    tracker = MlflowTracker(info["tracking_uri"], info["experiment_name"], run_id=info["run_id"], journal=output_dir / JOURNAL_FILE)
    summary = output_dir / "summary.json"
    if tracker.status() == "FINISHED" and summary.exists():
        log.info("run %s already finished; nothing to resume", info["run_id"])
        print(f"run {info['run_id']} already finished ({output_dir}); nothing to do")
        return RunResult(info["run_id"], output_dir, json.loads(summary.read_text())["metrics"])

    latest = checkpoint.latest_checkpoint(output_dir / "checkpoints")
    try:
        state = checkpoint.load_state(latest) if latest else None
    except (ValueError, KeyError, OSError) as e:  # a damaged or tampered file read back from the run
        raise ConfigError(f"resume={target!r} is not allowed; expected a run with a readable checkpoint ({e})") from None
    done = state.epoch if state else 0
    # The run's own train.log (uploaded at the end) goes on where it stopped;
    # Hydra's log for this command stays in the command's own run dir too.
    with log_also_to(output_dir / "train.log"):
        raw, splits = load_splits(cfg)
        config_yaml = config_file.read_text()
        tracker.reopen({PROCESS_TAG: process_identity(), "pid": str(os.getpid()), "resumed_from_epoch": str(done)})
        # Epochs the checkpoint has but MLflow missed get logged now; epochs MLflow
        # has beyond the checkpoint are re-run with identical results and not logged twice.
        history = state.result.history if state else []
        tracker.reconcile_epochs(history)
        EpochLogger.rewrite(output_dir / "metrics.jsonl", history)
        log.info("resuming run %s in %s after epoch %d", info["run_id"], output_dir, done)
        threads = blas_threads(cfg, hydra_context())
        return _execute(cfg, tracker, raw, splits, output_dir, config_yaml, threads, state=state, first_time=False)


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
    handler.setFormatter(files[0].formatter if files and files[0].formatter else logging.Formatter(LOG_FORMAT, LOG_DATEFMT))
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def _execute(
    cfg: DictConfig,
    tracker: Any,
    raw: data.RawDataset,
    splits: data.Splits,
    output_dir: Path,
    config_yaml: str,
    threads: int,
    state: checkpoint.TrainingState | None,
    first_time: bool,
) -> RunResult:
    """Train (from scratch or from ``state``) inside an open MLflow run and always close it."""
    from threadpoolctl import threadpool_limits

    # From here on a tracking failure never stops the training (everything is in the journal).
    tracker.fail_soft = True
    # One BLAS thread count for the whole run: it is part of what makes two runs bit-identical.
    with threadpool_limits(limits=threads, user_api="blas"):
        try:
            from mnist_np.stepper import shard_count

            # The batch's split into shard processes decides the bits as much as the thread count does.
            batch = min(cfg.trainer.batch_size, len(splits.y_train))  # as the training loop caps it
            env = {**environment_tags(), "train_shards": str(shard_count(batch, threads))}
            (output_dir / "environment.json").write_text(json.dumps(env, indent=2))
            tracker.set_tags(env)
            if first_time:
                tracker.log_dataset(raw.spec.name, raw.digest, source=str(cfg.data.dir or "pinned-sha256"), sizes=splits.sizes)
            result = _train_and_record(cfg, splits, raw, output_dir, config_yaml, tracker, state, threads)
        except KeyboardInterrupt:
            interrupted = RunInterrupted(tracker.run_id, checkpoint.latest_checkpoint(output_dir / "checkpoints"))
            tracker.end("KILLED", f"interrupted by the user (KeyboardInterrupt); {interrupted.advice}")
            _catch_up(tracker, output_dir, now=False)
            raise interrupted from None
        except BaseException as e:
            tracker.end("FAILED", f"{type(e).__name__}: {e}")
            _catch_up(tracker, output_dir)
            raise
    result.run_id = tracker.run_id
    tracker.end("FINISHED")
    _catch_up(tracker, output_dir)
    return result


def _catch_up(tracker: Any, output_dir: Path, now: bool = True) -> None:
    """After a run that lost MLflow: upload what it missed if the server is back, else say how to."""
    if tracker.offline is None:
        return
    from mnist_np.sync import sync_output_dir
    from mnist_np.tracking import server_reachable

    if now and server_reachable(tracker.tracking_uri):
        try:
            report = sync_output_dir(output_dir)
            log.info("MLflow is back: %s", report.line())
            return
        except Exception as e:  # the files are safe; the user can sync later
            log.warning("could not upload the missed calls yet: %s", e)
    log.warning("the run is complete in %s but MLflow misses part of it; upload it with: python scripts/sync.py %s",
                output_dir, output_dir)


def _write_config_files(output_dir: Path, config_yaml: str, overrides: list[str]) -> None:
    """``config/``: the resolved config, the overrides and Hydra's own config (if Hydra ran us)."""
    cfg_dir = output_dir / "config"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / "config.yaml").write_text(config_yaml)
    (cfg_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    hydra_yaml = output_dir / ".hydra" / "hydra.yaml"
    if hydra_yaml.exists():
        shutil.copyfile(hydra_yaml, cfg_dir / "hydra.yaml")


def _train_and_record(
    cfg: DictConfig,
    splits: data.Splits,
    raw: data.RawDataset,
    output_dir: Path,
    config_yaml: str,
    tracker: Any,
    state: checkpoint.TrainingState | None,
    threads: int,
) -> RunResult:
    dtype = np.dtype(cfg.trainer.dtype)
    rngs = rng_streams(cfg.seed)
    model = build_model(cfg, rngs["init"], dtype)
    optimizer = build_optimizer(cfg)
    fit_state = FitResult()
    if state is not None:
        # Everything fit() reads or draws from, exactly as it was after state.epoch.
        model.load_params(state.params)
        optimizer.load_state_dict(state.optimizer)
        checkpoint.restore_rngs(rngs, state.rng_states)
        fit_state = state.result
    settings = TrainSettings(
        epochs=cfg.trainer.epochs,
        batch_size=cfg.trainer.batch_size,
        eval_batch_size=cfg.trainer.eval_batch_size,
        monitor=cfg.trainer.monitor,
        early_stopping_patience=cfg.trainer.early_stopping_patience,
        progress=sys.stderr.isatty() if cfg.trainer.progress is None else bool(cfg.trainer.progress),
        threads=threads,
    )
    checkpointer = checkpoint.Checkpointer(
        output_dir / "checkpoints", optimizer, rngs, config_yaml, tracker.run_id, settings.epochs,
        every=cfg.trainer.checkpoint_every, keep=cfg.trainer.keep_checkpoints,
        on_saved=(lambda path: tracker.log_artifact(path, "checkpoints")) if cfg.mlflow.log_checkpoints else None,
    )
    checkpointer.bind(fit_state)
    fit_result = fit(
        model,
        optimizer,
        build_schedule(cfg),
        splits.x_train,
        splits.y_train,
        splits.x_val,
        splits.y_val,
        settings,
        shuffle_rng=rngs["shuffle"],
        dropout_rng=rngs["dropout"],
        # The checkpoint is written before MLflow hears of the epoch: see resume().
        callbacks=[EpochLogger(output_dir / "metrics.jsonl", settings.epochs, append=state is not None), checkpointer, tracker],
        result=fit_state,
    )

    weights_dir = output_dir / "weights"
    final_params = {k: v.copy() for k, v in model.params.items()}
    checkpoint.save_weights(weights_dir / "final.npz", final_params, config_yaml)
    checkpoint.save_weights(weights_dir / "best.npz", fit_result.best_params, config_yaml)
    if cfg.trainer.test_weights == "best":
        model.params.update(fit_result.best_params)
    tested_sha = checkpoint.weights_sha256(model.params)

    logits = model.predict_logits(splits.x_test, cfg.trainer.eval_batch_size)
    test_loss, test_acc = score_logits(logits, splits.y_test)
    wait_for_plots: Callable[[], str | None] = lambda: None  # noqa: E731
    if cfg.mlflow.log_plots:
        from mnist_np import plots

        # Drawn in a child process (about a second of matplotlib) while this one
        # records the results, logs the model and uploads the other artifacts.
        wait_for_plots = plots.save_all_in_background(
            output_dir / "plots", fit_result.history, splits.y_test, logits.argmax(axis=1),
            splits.x_test, model.params["W1"], raw.spec.class_names,
        )
    best = fit_result.history[fit_result.best_epoch - 1]
    final = {
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "best_epoch": float(fit_result.best_epoch),
        "best_val_loss": best["val_loss"],
        "best_val_accuracy": best["val_accuracy"],
        "epochs_trained": float(len(fit_result.history)),
        "train_seconds": float(sum(h["epoch_seconds"] for h in fit_result.history)),
    }
    log.info("test loss %.4f accuracy %.4f (%s weights, epoch %d of %d)", test_loss, test_acc,
             cfg.trainer.test_weights, fit_result.best_epoch if cfg.trainer.test_weights == "best" else len(fit_result.history),
             len(fit_result.history))
    final_sha = checkpoint.weights_sha256(final_params)
    (output_dir / "summary.json").write_text(
        json.dumps({"metrics": final, "weights_sha256": final_sha, "tested_weights_sha256": tested_sha}, indent=2)
    )

    tracker.log_metrics({k: v for k, v in final.items() if v == v}, step=len(fit_result.history))
    tracker.set_tags({
        "weights_sha256": final_sha,
        "tested_weights_sha256": tested_sha,
        "stopped_early": str(fit_result.stopped_early).lower(),
    })

    warnings = []
    # Uploads fail soft (the tracker logs why); what MLflow refused while it was up becomes a warning.
    for sub in ("config", "weights"):
        tracker.log_artifacts(output_dir / sub, sub)
    # The model serves the weights the test set was scored with.
    tracker.log_model(weights_dir / ("best.npz" if cfg.trainer.test_weights == "best" else "final.npz"), splits.x_test[:5])
    plot_error = wait_for_plots()
    if plot_error is not None:  # a figure must never fail a finished training
        log.warning("plots failed: %s", plot_error)
        warnings.append(f"plots: {plot_error}")
    if (output_dir / "plots").is_dir():
        tracker.log_artifacts(output_dir / "plots", "plots")
    for name in ("metrics.jsonl", "summary.json", "train.log"):
        if (output_dir / name).exists():
            tracker.log_artifact(output_dir / name)
    warnings += tracker.failures
    if warnings:
        tracker.set_tags({"warnings": "; ".join(warnings)[:8000]})
    return RunResult(run_id="", output_dir=output_dir, metrics=final, history=fit_result.history)
