"""Bad configuration: every key of the schema, and every group, given values it must refuse.

The list of keys comes from the schema (:func:`mnist_np.experiment.config.schema.schema_keys`),
so a key added without bad values here fails ``test_every_key_has_bad_values``.
Each case goes the way a command line does -- the override check, Hydra's
composition, then :func:`mnist_np.experiment.run.single.run` -- in-process, with a private
store and output dir, and must stop with one line that names the key, the
value and what is allowed, before any store, run or output dir exists. A few
cases also go through ``scripts/train.py`` (exit status 2).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON, TRAIN_SCRIPT
from mnist_np.common.paths import PROJECT_ROOT
from mnist_np.experiment.config.compose import check_overrides, compose
from mnist_np.experiment.config.schema import GROUP_SCHEMAS, ConfigError, schema_keys
from mnist_np.experiment.run.single import run

A_FILE = str(PROJECT_ROOT / "pyproject.toml")  # exists, and is not a folder
LONG = "x" * 251

# key -> cases: (overrides, how the value shows in the message). The value must be
# refused whatever else the command line says, so each case is self-contained.
BAD: dict[str, list[tuple[list[str], str]]] = {
    "seed": [(["seed=-1"], "-1"), (["seed=abc"], "'abc'")],
    "resume": [(["resume=/no/such/run"], "'/no/such/run'"), (["resume=[1,2]"], "[1, 2]")],
    "tags": [(["tags=[UPPER]"], "['UPPER']"), (["tags=[host]"], "'host' is one"), (["tags=[a,a]"], "['a', 'a']"),
             ([f"tags=[{'x' * 41}]"], "x" * 41)],
    "notes": [(["notes=''"], "''"), ([f"notes={'y' * 8001}"], "'" + "y" * 40 + "...'")],
    # dry_run=true itself is answered by scripts/train.py before any run; a run that gets it (from a preset) refuses it.
    "dry_run": [(["dry_run=maybe"], "'maybe'"), (["dry_run=true"], "dry_run=true is not allowed in a config file")],
    "data": [(["data=cifar10"], "'cifar10'"), (["~data"], "data is missing")],
    "data.name": [(["data.name=cifar10"], "'cifar10'")],
    "data.dir": [(["data.dir=/no/such/folder"], "'/no/such/folder'"), (["data.dir=[a,b]"], "['a', 'b']")],
    "data.cache_dir": [([f"data.cache_dir={A_FILE}"], repr(A_FILE)), (["data.cache_dir=[a]"], "['a']")],
    "data.val_size": [(["data.val_size=60000"], "60000"), (["data.val_size=-1"], "-1"), (["data.val_size=0.5"], "0.5")],
    "data.split_seed": [(["data.split_seed=-3"], "-3"), (["data.split_seed=x"], "'x'")],
    "data.train_limit": [(["data.train_limit=0"], "0"), (["data.train_limit=many"], "'many'")],
    "model": [(["model=cnn"], "'cnn'"), (["~model"], "model is missing")],
    "model.name": [(["model.name=cnn"], "'cnn'")],
    "model.hidden_size": [
        (["model.hidden_size=0"], "0"),
        (["model.hidden_size=1000000000"], "1000000000"),  # refused from the memory estimate, before allocating
        (["model.hidden_size=null"], "None"),
        (["model.hidden_size=???"], "???"),
    ],
    "model.num_hidden_layers": [(["model.num_hidden_layers=-1"], "-1"), (["model.num_hidden_layers=two"], "'two'")],
    "model.activation": [(["model.activation=swish"], "'swish'")],
    "model.negative_slope": [(["model.negative_slope=-0.1"], "-0.1")],
    "model.init": [(["model.init=orthogonal"], "'orthogonal'")],
    "model.init_scale": [(["model.init_scale=0"], "0.0")],
    "model.dropout": [(["model.dropout=1.0"], "1.0"), (["model.dropout=-0.1"], "-0.1")],
    "optimizer": [(["optimizer=lbfgs"], "'lbfgs'"), (["~optimizer"], "optimizer is missing")],
    "optimizer.name": [(["optimizer.name=lbfgs"], "'lbfgs'")],
    "optimizer.lr": [(["optimizer.lr=0"], "0.0"), (["optimizer.lr=fast"], "'fast'"), (["optimizer.lr=inf"], "inf")],
    "optimizer.momentum": [(["optimizer.momentum=1.0"], "1.0"),
                           (["optimizer=adam", "optimizer.momentum=0.9"], "optimizer=adam")],
    "optimizer.nesterov": [(["optimizer.momentum=0", "optimizer.nesterov=true"], "True"),
                           (["optimizer.nesterov=3"], "3")],
    "optimizer.weight_decay": [(["optimizer.weight_decay=-1"], "-1.0")],
    "optimizer.betas": [
        (["optimizer=adam", "optimizer.betas=[0.9,1.0]"], "[0.9, 1.0]"),
        (["optimizer=adam", "optimizer.betas=[0.9]"], "[0.9]"),
        (["optimizer=sgd", "optimizer.betas=[0.9,0.99]"], "optimizer=sgd"),
    ],
    "optimizer.eps": [(["optimizer=adam", "optimizer.eps=0"], "0.0")],
    "schedule": [(["schedule=poly"], "'poly'"), (["~schedule"], "schedule is missing")],
    "schedule.name": [(["schedule.name=poly"], "'poly'")],
    "schedule.warmup_epochs": [(["trainer.epochs=5", "schedule.warmup_epochs=6"], "6.0"),
                               (["schedule.warmup_epochs=-1"], "-1.0")],
    "schedule.step_size": [(["schedule=step", "schedule.step_size=0"], "0")],
    "schedule.gamma": [(["schedule=step", "schedule.gamma=1.5"], "1.5")],
    "schedule.min_lr": [(["schedule=cosine", "optimizer.lr=0.1", "schedule.min_lr=0.5"], "0.5")],
    "trainer": [(["trainer=fast"], "'fast'"), (["~trainer"], "trainer is missing")],
    "trainer.epochs": [(["trainer.epochs=0"], "0"), (["trainer.epochs=abc"], "'abc'")],
    "trainer.batch_size": [(["data.train_limit=100", "trainer.batch_size=128"], "128"),
                           (["trainer.batch_size=0"], "0")],
    "trainer.eval_batch_size": [(["trainer.eval_batch_size=0"], "0")],
    "trainer.dtype": [(["trainer.dtype=float16"], "'float16'")],
    "trainer.monitor": [(["trainer.monitor=test_accuracy"], "'test_accuracy'")],
    "trainer.early_stopping_patience": [
        (["trainer.early_stopping_patience=0"], "0"),
        (["data.val_size=0", "trainer.early_stopping_patience=3"], "3"),
    ],
    "trainer.test_weights": [(["trainer.test_weights=middle"], "'middle'")],
    "trainer.progress": [(["trainer.progress=maybe"], "'maybe'")],
    "trainer.threads": [(["trainer.threads=0"], "0")],
    "trainer.checkpoint_every": [(["trainer.checkpoint_every=0"], "0")],
    "trainer.keep_checkpoints": [(["trainer.keep_checkpoints=0"], "0")],
    "mlflow": [(["mlflow=remote"], "'remote'"), (["~mlflow"], "mlflow is missing")],
    "mlflow.tracking_uri": [(["mlflow.tracking_uri=mlruns"], "'mlruns'"),
                            (["mlflow.tracking_uri=ftp://host/x"], "'ftp://host/x'")],
    "mlflow.experiment_name": [(["mlflow.experiment_name=' '"], "' '")],
    "mlflow.run_name": [(["mlflow.run_name=''"], "''"), ([f"mlflow.run_name={LONG}"], LONG)],
    "mlflow.sweep_name": [(["mlflow.sweep_name=''"], "''")],
    "mlflow.log_plots": [(["mlflow.log_plots=3"], "3")],
    "mlflow.log_checkpoints": [(["mlflow.log_checkpoints=sometimes"], "'sometimes'")],
    "mlflow.log_system_metrics": [(["mlflow.log_system_metrics=sometimes"], "'sometimes'")],
    "mlflow.register_as": [(["mlflow.register_as='a b'"], "'a b'"), (["mlflow.register_as=''"], "''")],
    "augment": [(["augment=cutout"], "'cutout'"), (["~augment"], "augment is missing")],
    "augment.name": [(["augment.name=cutout"], "'cutout'")],
    "augment.max_shift": [(["augment=shift", "augment.max_shift=-1"], "-1"),
                          (["augment=shift", "augment.max_shift=11"], "11"),
                          (["augment=shift", "augment.max_shift=1.5"], "1.5"),
                          (["augment=elastic", "augment.max_shift=2"], "augment=elastic")],
    "augment.rotation": [(["augment=affine", "augment.rotation=-5"], "-5.0"),
                         (["augment=affine", "augment.rotation=181"], "181.0")],
    "augment.scale": [(["augment=affine", "augment.scale=1"], "1.0"),
                      (["augment=affine", "augment.scale=-0.1"], "-0.1")],
    "augment.shear": [(["augment=affine", "augment.shear=46"], "46.0"),
                      (["augment=affine", "augment.shear=nan"], "nan")],
    "augment.translate": [(["augment=affine", "augment.translate=-1"], "-1.0"),
                          (["augment=affine", "augment.translate=11"], "11.0")],
    "augment.alpha": [(["augment=elastic", "augment.alpha=-1"], "-1.0"),
                      (["augment=elastic", "augment.alpha=101"], "101.0"),
                      (["augment=shift", "augment.alpha=34"], "augment=shift")],
    "augment.sigma": [(["augment=elastic", "augment.sigma=0.5"], "0.5"),
                      (["augment=elastic", "augment.sigma=inf"], "inf")],
}
KEYS = sorted(schema_keys() | set(GROUP_SCHEMAS))
CASES = [pytest.param(key, overrides, shown, id=f"{key}:{' '.join(overrides)}"[:90])
         for key in KEYS for overrides, shown in BAD.get(key, [])]


def test_every_key_has_bad_values() -> None:
    """Driven by the schema: a new key (or group) needs its bad values here."""
    assert [k for k in KEYS if not BAD.get(k)] == [], "schema keys without bad values in BAD"
    assert sorted(set(BAD) - set(KEYS)) == [], "BAD names keys the schema does not have"


def refuse(overrides: list[str], tmp_path: Path) -> str:
    """What a command line gets: the override check, composition, then run(); the ConfigError's text."""
    store = tmp_path / "store" / "mlflow.db"
    args = [f"mlflow.tracking_uri=sqlite:///{store}", *overrides]  # later overrides win: the case's own URI too
    with pytest.raises(ConfigError) as refused:
        check_overrides(args)
        run(compose(args), output_dir=tmp_path / "out")
    assert not store.exists() and not store.parent.exists(), "a store was created for a bad config"
    assert not (tmp_path / "out").exists(), "an output dir was made for a bad config"
    return str(refused.value)


@pytest.mark.parametrize("key,overrides,shown", CASES)
@pytest.mark.fault("bad config", "refused")
def test_bad_value_is_refused_with_one_line_and_nothing_created(key: str, overrides: list[str], shown: str,
                                                                tmp_path: Path) -> None:
    message = refuse(overrides, tmp_path)
    assert "\n" not in message, message
    assert key in message and shown in message, message
    assert "expected" in message or "allowed" in message or "keys:" in message, message


CLI_CASES = [
    (["~model"], "model is missing; expected one of mlp"),
    (["optimizer.betas=[0.9,0.99]"], "optimizer.betas is not a key of optimizer=sgd; its keys: "),
    (["trainer.epochs=5", "schedule.warmup_epochs=6"],
     "schedule.warmup_epochs=6.0 is not allowed; expected a number in [0, 5]"),
    (["data.train_limit=100", "trainer.batch_size=128"],
     "trainer.batch_size=128 is not allowed; expected at most the training split's 100 images"),
    (["mlflow.log_plots=3"], "mlflow.log_plots=3 has the wrong type; expected true or false"),
]


@pytest.mark.parametrize("overrides,line", CLI_CASES, ids=[" ".join(o) for o, _ in CLI_CASES])
@pytest.mark.fault("bad config", "exit 2")
def test_cli_refuses_with_one_line_exit_2(overrides: list[str], line: str, tmp_path: Path) -> None:
    store = tmp_path / "store" / "mlflow.db"
    proc = subprocess.run(
        [PYTHON, str(TRAIN_SCRIPT), *overrides, f"mlflow.tracking_uri=sqlite:///{store}",
         f"hydra.run.dir={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    (only,) = [x for x in proc.stderr.splitlines() if x.strip()]
    assert only.startswith(f"error: invalid config: {line}"), only
    assert not store.parent.exists()
    # Nothing beyond what Hydra itself makes for a job (these are refused before Hydra starts).
    assert not (tmp_path / "out").exists() or {p.name for p in (tmp_path / "out").iterdir()} <= {".hydra", "train.log"}
