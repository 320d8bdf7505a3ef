"""The training inside an open MLflow run -- new or resumed -- and the run always closed at the end.

Once the run exists, MLflow can no longer stop it: the tracker fails soft
(see :mod:`mnist_np.tracking.tracker`), and if the server came back by the
end the run uploads what it missed itself (:mod:`mnist_np.tracking.sync`).
The run ends FINISHED, FAILED with its reason, or KILLED on Ctrl-C or when
Slurm requeues it (:mod:`mnist_np.experiment.run.preemption`), never left
RUNNING; everything it logs is also written to its output dir.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from omegaconf import DictConfig
from threadpoolctl import threadpool_limits

from mnist_np import data, plots
from mnist_np.common.errors import error_line
from mnist_np.common.files import atomic_write_text
from mnist_np.experiment.config.builders import (
    build_augmentation,
    build_model,
    build_optimizer,
    build_schedule,
    rng_streams,
    train_settings,
)
from mnist_np.experiment.run.member import PRUNED
from mnist_np.experiment.run.outputs import EpochLogger
from mnist_np.experiment.run.preemption import PreemptionWatch
from mnist_np.experiment.run.provenance import environment_tags
from mnist_np.experiment.run.results import RunInterrupted, RunResult
from mnist_np.nn.metrics import score_logits
from mnist_np.nn.model import MLP
from mnist_np.nn.weights import save_weights, weights_sha256
from mnist_np.tracking.conventions import PRUNED_TAG
from mnist_np.tracking.registry import register_run_model
from mnist_np.tracking.sync import sync_output_dir
from mnist_np.tracking.system_metrics import system_metrics
from mnist_np.tracking.tracker import MlflowTracker
from mnist_np.tracking.uris import how_to_see, server_reachable
from mnist_np.train.checkpoint import Checkpointer, TrainingState, latest_checkpoint, restore_rngs
from mnist_np.train.loop import FitResult, StopRule, fit
from mnist_np.train.stepper import shard_count

log = logging.getLogger(__name__)


@dataclass
class Job:
    """A run about to train: its config, open tracker, data, output dir and cores."""

    cfg: DictConfig
    tracker: MlflowTracker
    raw: data.RawDataset
    splits: data.Splits
    output_dir: Path
    config_yaml: str  # the resolved config, as saved in config/ and inside every weights file
    threads: int
    stop_rule: StopRule | None = None  # a search member's report to its trial, which may prune it
    register_as: str | None = None  # a registered model the finished run's model becomes a version of (not in sweeps)


def execute(job: Job, state: TrainingState | None = None, resumed: bool = False,
            log_dataset: bool | None = None) -> RunResult:
    """Train (from scratch, or on from ``state``) inside the job's open MLflow run and always close it.

    ``resumed``: the run existed before (its system metrics go on from their last step);
    ``log_dataset``: whether the run's dataset input still has to be logged (default: unless ``resumed``).
    The run's ``train.log`` is uploaded last, after its last line (:func:`_last_words`).
    """
    tracker, output_dir = job.tracker, job.output_dir
    log_dataset = not resumed if log_dataset is None else log_dataset
    # From here on a tracking failure never stops the training (everything is in the journal).
    tracker.fail_soft = True
    # One BLAS thread count for the whole run: it is part of what makes two runs bit-identical.
    with threadpool_limits(limits=job.threads, user_api="blas"), PreemptionWatch() as preemption:
        try:
            # The batch's split into shard processes decides the bits as much as the thread count does.
            batch = min(job.cfg.trainer.batch_size, len(job.splits.y_train))  # as the training loop caps it
            env = {**environment_tags(), "train_shards": str(shard_count(batch, job.threads))}
            atomic_write_text(output_dir / "environment.json", json.dumps(env, indent=2))
            tracker.set_tags(env)
            if log_dataset:
                tracker.log_dataset(job.raw.spec.name, job.raw.digest, source=str(job.cfg.data.dir or "pinned-sha256"),
                                    sizes=job.splits.sizes)
            with system_metrics(tracker.tracking_uri, tracker.run_id or "", job.cfg.mlflow.log_system_metrics, resumed):
                model, fitted = train(job, state)
                result = record(job, model, fitted)
        except KeyboardInterrupt:
            interrupted = RunInterrupted(tracker.run_id or "", latest_checkpoint(output_dir / "checkpoints"))
            _close(tracker, output_dir, "KILLED", f"interrupted by the user (KeyboardInterrupt); {interrupted.advice}",
                   now=False)
            raise interrupted from None
        except BaseException as e:
            if preemption.requeued_exit(e):
                # Slurm took the node back and requeued the job: its next attempt continues this run.
                _close(tracker, output_dir, "KILLED",
                       f"{preemption.signal_name} from Slurm (preempted or out of time): "
                       "requeued; it resumes from its newest checkpoint into this run", now=False)
                raise
            _close(tracker, output_dir, "FAILED", f"{type(e).__name__}: {e}")
            raise
    result.run_id = tracker.run_id or ""
    tracker.end("FINISHED")
    _catch_up(tracker, output_dir)
    if job.register_as:
        _register(job, result)
    _last_words(tracker, output_dir, result_line(job, result))
    return result


def result_line(job: Job, result: RunResult) -> str:
    """The one line a finished run ends with: its name and id, test accuracy, where its files are, how to see it."""
    tracker = job.tracker
    m = result.metrics
    return (f"run {tracker.run_name} ({result.run_id}) FINISHED: test accuracy {m['test_accuracy']:.4f} "
            f"(validation {m['best_val_accuracy']:.4f}); files in {job.output_dir}; "
            f"{how_to_see(tracker.tracking_uri, tracker.experiment_id, result.run_id)}")


def _close(tracker: MlflowTracker, output_dir: Path, status: str, reason: str, now: bool = True) -> None:
    """End the run ``status`` with ``reason``, catch MLflow up if it was lost, and say so last in the run's log."""
    tracker.end(status, reason)
    _catch_up(tracker, output_dir, now=now)
    _last_words(tracker, output_dir, f"run {tracker.run_name} ({tracker.run_id}) {status}: {reason.splitlines()[0]}")


def _last_words(tracker: MlflowTracker, output_dir: Path, line: str) -> None:
    """Log the run's last line, then upload its ``train.log``: the artifact ends where the run did."""
    log.info("%s", line)
    train_log = output_dir / "train.log"
    if train_log.is_file():
        tracker.log_artifact(train_log)


def _register(job: Job, result: RunResult) -> None:
    """The finished run's model as a new version of ``job.register_as``; a failure is a warning, the run stays
    FINISHED."""
    tracker = job.tracker
    if tracker.offline is not None:
        log.warning("MLflow was unreachable: the model is not registered as %r (register it later from the run)",
                    job.register_as)
        return
    try:
        tags = {"val_accuracy": result.metrics["best_val_accuracy"], "test_accuracy": result.metrics["test_accuracy"]}
        version = register_run_model(tracker.tracking_uri, job.register_as or "", result.run_id,
                                     {k: f"{v:.4f}" for k, v in tags.items()})
        log.info("model registered: models:/%s/%s", job.register_as, version)
    except Exception as e:  # noqa: BLE001 -- the run and its model are safe; only the registry entry is missing
        log.warning("could not register the model as %r: %s", job.register_as, error_line(e))


def train(job: Job, state: TrainingState | None) -> tuple[MLP, FitResult]:
    """Build the network and its training from the config (restored from ``state`` if given) and fit it."""
    cfg, tracker = job.cfg, job.tracker
    rngs = rng_streams(cfg.seed)
    model = build_model(cfg, rngs["init"], np.dtype(cfg.trainer.dtype))
    optimizer = build_optimizer(cfg)
    fit_state = FitResult()
    if state is not None:
        # Everything fit() reads or draws from, exactly as it was after state.epoch.
        model.load_params(state.params)
        optimizer.load_state_dict(state.optimizer)
        restore_rngs(rngs, state.rng_states)
        fit_state = state.result
    settings = train_settings(cfg, job.threads)
    checkpointer = Checkpointer(
        job.output_dir / "checkpoints", optimizer, rngs, job.config_yaml, tracker.run_id or "", settings.epochs,
        every=cfg.trainer.checkpoint_every, keep=cfg.trainer.keep_checkpoints,
        on_saved=(lambda path: tracker.log_artifact(path, "checkpoints")) if cfg.mlflow.log_checkpoints else None,
    )
    checkpointer.bind(fit_state)
    epochs = EpochLogger(job.output_dir / "metrics.jsonl", settings.epochs, append=state is not None)
    s = job.splits
    fitted = fit(
        model, optimizer, build_schedule(cfg), s.x_train, s.y_train, s.x_val, s.y_val, settings,
        shuffle_rng=rngs["shuffle"], dropout_rng=rngs["dropout"],
        # The checkpoint is written before MLflow hears of the epoch: see experiment.resume.
        callbacks=[epochs, checkpointer, tracker], result=fit_state, stop_rule=job.stop_rule,
        augmentation=build_augmentation(cfg), augment_rng=rngs["augment"],
    )
    return model, fitted


def record(job: Job, model: MLP, fitted: FitResult) -> RunResult:
    """Save the weights, score the test set once, and log results, weights, model and figures."""
    cfg, tracker, output_dir, s = job.cfg, job.tracker, job.output_dir, job.splits
    weights_dir = output_dir / "weights"
    final_params = {k: v.copy() for k, v in model.params.items()}
    save_weights(weights_dir / "final.npz", final_params, job.config_yaml)
    save_weights(weights_dir / "best.npz", fitted.best_params, job.config_yaml)
    if cfg.trainer.test_weights == "best":
        model.params.update(fitted.best_params)
    logits = model.predict_logits(s.x_test, cfg.trainer.eval_batch_size)
    test_loss, test_acc = score_logits(logits, s.y_test)
    wait_for_plots: Callable[[], str | None] = lambda: None  # noqa: E731
    if cfg.mlflow.log_plots:
        # Drawn (about a second of matplotlib) while this process records the
        # results, logs the model and uploads the other artifacts.
        wait_for_plots = plots.save_all_in_background(
            output_dir / "plots", fitted.history, s.y_test, logits.argmax(axis=1), s.x_test, model.params["W1"],
            job.raw.spec.class_names,
        )
    best = fitted.history[fitted.best_epoch - 1]
    final = {
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "best_epoch": float(fitted.best_epoch),
        "best_val_loss": best["val_loss"],
        "best_val_accuracy": best["val_accuracy"],
        "epochs_trained": float(len(fitted.history)),
        "train_seconds": float(sum(h["epoch_seconds"] for h in fitted.history)),
    }
    tested_epoch = fitted.best_epoch if cfg.trainer.test_weights == "best" else len(fitted.history)
    log.info("test loss %.4f accuracy %.4f (%s weights, epoch %d of %d)", test_loss, test_acc, cfg.trainer.test_weights,
             tested_epoch, len(fitted.history))
    hashes = {"weights_sha256": weights_sha256(final_params), "tested_weights_sha256": weights_sha256(model.params)}
    pruned = {PRUNED_TAG: len(fitted.history)} if fitted.stop_reason == PRUNED else {}
    atomic_write_text(output_dir / "summary.json", json.dumps({"metrics": final, **hashes, **pruned}, indent=2))
    tracker.log_metrics(final, step=len(fitted.history))
    tracker.set_tags({**hashes, "stopped_early": str(fitted.stopped_early).lower(),
                      **{k: str(v) for k, v in pruned.items()}})
    _upload(job, wait_for_plots)
    return RunResult(run_id="", output_dir=output_dir, metrics=final, history=fitted.history)


def _upload(job: Job, wait_for_plots: Callable[[], str | None]) -> None:
    """The run's files as artifacts and its model; what MLflow refused while it was up becomes a ``warnings`` tag."""
    cfg, tracker, output_dir = job.cfg, job.tracker, job.output_dir
    warnings = []
    # Uploads fail soft (the tracker logs why).
    for sub in ("config", "weights"):
        tracker.log_artifacts(output_dir / sub, sub)
    # The model serves the weights the test set was scored with.
    tracker.log_model(output_dir / "weights" / ("best.npz" if cfg.trainer.test_weights == "best" else "final.npz"),
                      job.splits.x_test[:5])
    plot_error = wait_for_plots()
    if plot_error is not None:  # a figure must never fail a finished training
        log.warning("plots failed: %s", plot_error)
        warnings.append(f"plots: {plot_error}")
    if (output_dir / "plots").is_dir():
        tracker.log_artifacts(output_dir / "plots", "plots")
    for name in ("metrics.jsonl", "summary.json"):  # train.log goes last (_last_words)
        if (output_dir / name).exists():
            tracker.log_artifact(output_dir / name)
    warnings += tracker.failures
    if warnings:
        tracker.set_tags({"warnings": "; ".join(warnings)})


def _catch_up(tracker: MlflowTracker, output_dir: Path, now: bool = True) -> None:
    """After a run that lost MLflow: upload what it missed if the server is back, else say how to."""
    if tracker.offline is None:
        return
    if now and server_reachable(tracker.tracking_uri):
        try:
            report = sync_output_dir(output_dir)
            log.info("MLflow is back: %s", report.line())
            return
        except Exception as e:  # the files are safe; the user can sync later
            log.warning("could not upload the missed calls yet: %s", e)
    log.warning("the run is complete in %s but MLflow misses part of it; upload it with: python scripts/sync.py %s",
                output_dir, output_dir)
