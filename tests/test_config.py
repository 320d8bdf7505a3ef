"""Config composition (every group option and preset) and validation errors."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import MISSING, OmegaConf

from mnist_np.common.paths import CONF_DIR
from mnist_np.experiment.config.compose import check_overrides, compose, load_run_config
from mnist_np.experiment.config.schema import ConfigError, group_options, option_schema
from mnist_np.experiment.config.validation import validate
from mnist_np.nn.registry import OPTIMIZERS

GROUPS = ["data", "model", "optimizer", "schedule", "trainer", "mlflow", "augment"]


def test_default_config_is_the_documented_one() -> None:
    cfg = compose()
    assert cfg.model.hidden_size == 128 and cfg.model.num_hidden_layers == 1
    assert cfg.model.activation == "relu" and cfg.data.name == "mnist"
    assert cfg.data.val_size == 5000 and cfg.trainer.dtype == "float32"
    validate(cfg)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_group_option_composes_and_validates(group: str, option: str) -> None:
    cfg = compose([f"{group}={option}"])
    validate(cfg)
    if group in ("data", "optimizer", "schedule", "augment"):
        assert cfg[group].name == option


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_schema_defaults_are_the_yaml_values_or_required(group: str, option: str) -> None:
    """One source of every default: each schema field equals what the option's YAML holds, or is MISSING (set by every
    option)."""
    node = OmegaConf.to_container(compose([f"{group}={option}"])[group], resolve=False)
    assert isinstance(node, dict)
    schema = option_schema(group, node.get("name", option))
    fields = dataclasses.fields(schema)
    assert set(node) == {f.name for f in fields}
    for f in fields:
        default = (f.default_factory() if f.default_factory is not dataclasses.MISSING  # type: ignore[misc]
                   else f.default)
        assert node[f.name] != MISSING, f"{group}={option} leaves {f.name} unset"
        if default != MISSING:
            assert node[f.name] == default, (f"{group}.{f.name}: the schema says {default!r}, "
                                             f"conf/{group}/{option}.yaml {node[f.name]!r}")


def test_a_saved_config_lacking_a_key_trains_with_the_yaml_default_or_is_refused() -> None:
    saved = OmegaConf.to_container(compose(), resolve=True)
    assert isinstance(saved, dict)
    del saved["optimizer"]["momentum"]  # the schema's default is the YAML's, never another value
    cfg = load_run_config(OmegaConf.to_yaml(OmegaConf.create(saved)))
    assert cfg.optimizer.momentum == compose().optimizer.momentum == 0.9
    del saved["schedule"]["name"]  # differs between options: required
    with pytest.raises(ConfigError, match=r"^schedule.name=\?\?\? leaves a required value unset"):
        load_run_config(OmegaConf.to_yaml(OmegaConf.create(saved)))


def test_the_registries_default_nothing() -> None:
    """A factory takes every setting from the config: a missing one is an error, never a silent default."""
    for name, factory in OPTIMIZERS.items():
        with pytest.raises(TypeError):
            factory()


@pytest.mark.parametrize("preset", group_options("experiment"))
def test_every_experiment_preset_composes_and_validates(preset: str) -> None:
    cfg = compose([f"+experiment={preset}"])
    validate(cfg)
    assert "_target_" not in OmegaConf.to_yaml(cfg)


def test_seed_baseline_is_the_tutorial_setup() -> None:
    cfg = compose(["+experiment=seed_baseline"])
    assert ((cfg.model.hidden_size, cfg.model.activation, cfg.model.init, cfg.model.init_scale)
            == (128, "relu", "normal", 0.01))
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum) == ("sgd", 0.01, 0.0)
    assert (cfg.trainer.batch_size, cfg.trainer.epochs, cfg.trainer.dtype) == (64, 10, "float64")
    assert cfg.schedule.name == "constant"


def test_debug_preset_shrinks_the_run() -> None:
    cfg = compose(["+debug=fast"])
    assert cfg.data.train_limit == 2000 and cfg.trainer.epochs == 2


@pytest.mark.fault("security", "loopback")
def test_no_target_strings_in_conf() -> None:
    offenders = [p for p in CONF_DIR.rglob("*.yaml") if "_target_" in p.read_text()]
    assert offenders == []


def test_schema_types_are_enforced_at_composition() -> None:
    cfg = compose(["trainer.epochs=3", "optimizer.lr=0.5"])
    assert cfg.trainer.epochs == 3 and isinstance(cfg.trainer.epochs, int)
    assert cfg.optimizer.lr == 0.5


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("optimizer=nope", "optimizer='nope' is not a known option; allowed: adam, adamw, sgd"),
        ("+experiment=nope", "experiment='nope' is not a known option"),
        ("trainer.epochs=abc", "trainer.epochs='abc' has the wrong type; expected an integer"),
        ("optimizer.lr=fast", "optimizer.lr='fast' has the wrong type; expected a number"),
        ("trainer.epoch=3", "trainer.epoch is not a config key; keys of trainer:"),
        ("model.hidden_size=64,abc", "model.hidden_size='abc' has the wrong type"),
        ("sed=1", "sed is not a config key; top-level keys: dry_run, notes, resume, seed, tags"),
    ],
)
@pytest.mark.fault("bad config", "refused")
def test_bad_overrides_are_caught_before_hydra(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        check_overrides([override])
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_sweeper_search_spaces_are_left_to_the_sweeper() -> None:
    # interval() and hydra.* are the sweeper's and launcher's to read: accepted as they are...
    check_overrides(["optimizer.lr=interval(0.001,0.1)", "hydra.launcher.n_jobs=2", "model.hidden_size=64,128"])
    # ...while the grid's own values on the same line are still checked, each of them.
    with pytest.raises(ConfigError, match="model.hidden_size='abc' has the wrong type"):
        check_overrides(["optimizer.lr=interval(0.001,0.1)", "hydra.launcher.n_jobs=2", "model.hidden_size=64,abc"])


def test_a_sweep_is_composed_once_per_swept_group_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """Swept values change no key (each is type-checked); swept options of a group can."""
    import mnist_np.experiment.config.compose as config

    composed: list[list[str]] = []
    real = config._compose
    monkeypatch.setattr(config, "_compose", lambda lines: composed.append(list(lines)) or real(lines))
    check_overrides(["seed=range(4)", "model.hidden_size=64,128,256", "optimizer.lr=0.01,0.1"])
    assert composed == [["seed=0", "model.hidden_size=64", "optimizer.lr=0.01"]]

    composed.clear()
    with pytest.raises(ConfigError, match="optimizer.betas is not a key of optimizer=sgd"):
        check_overrides(["optimizer=adam,sgd", "optimizer.betas=[0.9,0.99]"])
    assert [lines[-1] for lines in composed[:2]] == ["optimizer=adam", "optimizer=sgd"]


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("model.hidden_size=-1", "model.hidden_size=-1 is not allowed; expected a number >= 1"),
        ("optimizer.lr=0", "optimizer.lr=0.0 is not allowed; expected a number > 0"),
        ("trainer.batch_size=0", "trainer.batch_size=0 is not allowed; expected a number >= 1"),
        ("data.val_size=60000", "data.val_size=60000 is not allowed; expected an integer in [0, 59999]"),
        ("model.activation=swish",
         "model.activation='swish' is not allowed; expected one of leaky_relu, relu, sigmoid, tanh"),
        ("model.dropout=1.0", "model.dropout=1.0 is not allowed; expected a number in [0, 1)"),
        ("schedule.warmup_epochs=99", "schedule.warmup_epochs=99.0 is not allowed; expected a number in [0, 20]"),
        ("trainer.dtype=float16", "trainer.dtype='float16' is not allowed"),
        ("optimizer.momentum=1.5", "optimizer.momentum=1.5 is not allowed"),
        ("data.name=cifar10", "data.name='cifar10' is not allowed; expected one of fashion_mnist, mnist"),
    ],
)
@pytest.mark.fault("bad config", "refused")
def test_value_checks(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        validate(compose([override]))
    assert fragment in str(e.value)


@pytest.mark.fault("bad config", "refused")
def test_batch_larger_than_the_training_split_is_refused() -> None:
    with pytest.raises(ConfigError, match="at most the training split's 100 images"):
        validate(compose(["data.train_limit=100", "trainer.batch_size=128"]))


@pytest.mark.parametrize("preset", group_options("sweep"))
def test_every_sweep_preset_composes(preset: str) -> None:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from mnist_np.experiment.config.schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=[f"+sweep={preset}"], return_hydra_config=True)
    target = {"parallel": "joblib", "optuna": "optuna", "slurm": "Slurm"}[preset]
    plugin = cfg.hydra.sweeper if preset == "optuna" else cfg.hydra.launcher
    assert target.lower() in plugin._target_.lower()
    assert "mlflow_sweep" in cfg.hydra.callbacks


@pytest.mark.fault("bad config", "refused")
def test_an_absurd_network_is_refused_before_any_allocation() -> None:
    """Refused by validation, before a run allocates anything (the command's exit 2: tests/test_bad_config.py)."""
    with pytest.raises(ConfigError) as e:
        validate(compose(["model.hidden_size=1000000000"]))
    assert str(e.value).startswith("model.hidden_size=1000000000") and "GiB is available" in str(e.value)
    assert "\n" not in str(e.value)


def test_default_and_best_presets_fit_comfortably() -> None:
    from mnist_np.experiment.config.validation import estimated_bytes

    assert estimated_bytes(compose()) < 1024**3
    assert estimated_bytes(compose(["+experiment=best_mnist"])) < 1024**3


@pytest.mark.parametrize("option,key", [("optimizer=adam", "optimizer.eps"), ("optimizer=sgd", "optimizer.momentum"),
                                        ("schedule=step", "schedule.gamma"), ("data=fashion_mnist", "data.val_size")])
def test_group_options_are_typed_by_their_schema(option: str, key: str) -> None:
    from omegaconf import ValidationError

    cfg = compose([option])
    with pytest.raises(ValidationError):
        OmegaConf.update(cfg, key, "not a number")
