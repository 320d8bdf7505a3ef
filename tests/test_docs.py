"""The README's configuration reference agrees with the schema and the default config."""

from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf

from mnist_np.common.paths import PROJECT_ROOT
from mnist_np.experiment.compose import compose
from mnist_np.experiment.schema import schema_keys

README = (PROJECT_ROOT / "README.md").read_text()
ROWS = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z_.]+)` \| ([^|]*) \|", README, re.M)}


SWEEPER = "hydra.sweeper."


def test_every_schema_key_is_documented_and_nothing_else() -> None:
    documented = {k for k in ROWS if not k.startswith(SWEEPER)}
    assert schema_keys() - documented == set(), "keys missing from the README's configuration table"
    assert documented - schema_keys() == set(), "README documents keys the schema does not have"


def default_of(key: str) -> object:
    """The key's value in the default config, or in the first option of its group that has it
    (``optimizer.betas`` exists only for adam/adamw)."""
    from mnist_np.experiment.schema import group_options

    value = OmegaConf.select(compose(), key, default="<absent>")
    group = key.split(".")[0]
    for option in group_options(group) if value == "<absent>" else []:
        value = OmegaConf.select(compose([f"{group}={option}"]), key, default="<absent>")
        if value != "<absent>":
            break
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def render(value: object) -> str:
    """How the README writes a value: YAML-ish (null, true, [0.9, 0.999])."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(value) + "]"  # a list of names, as written in YAML
    return str(value)


@pytest.mark.parametrize("key", sorted(schema_keys()))
def test_documented_default_is_the_real_default(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert f"`{render(default_of(key))}`" in ROWS[key], (key, ROWS[key])


def test_the_guided_search_keys_are_documented_with_their_defaults() -> None:
    """The README's table of ``hydra.sweeper.*`` for ``+sweep=optuna`` is the sweeper's schema, with the preset's values."""
    import dataclasses

    from mnist_np.experiment.compose import compose_sweep
    from mnist_np.experiment.schema import SearchSweeperConfig

    documented = {k[len(SWEEPER):] for k in ROWS if k.startswith(SWEEPER)}
    assert documented == {f.name for f in dataclasses.fields(SearchSweeperConfig)} - {"_target_"}
    sweep = compose_sweep(["--multirun", "+sweep=optuna"])
    assert sweep is not None
    preset = OmegaConf.to_container(sweep[0].hydra.sweeper, resolve=False)
    for key in documented - {"params"}:
        assert f"`{render(preset[key])}`" in ROWS[SWEEPER + key], (key, preset[key], ROWS[SWEEPER + key])


def test_readme_pictures_exist_and_stay_small() -> None:
    """Every image the README shows is committed, a real PNG, and small enough to keep in git."""
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert {"docs/images/mlflow-compare.png", "docs/images/confusion-matrix.png"} <= set(images)
    for rel in images:
        path = PROJECT_ROOT / rel
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", rel
        assert path.stat().st_size < 300_000, rel


def test_every_file_and_module_the_readme_names_exists() -> None:
    """The README's references to the code (paths and dotted names) outlive a reorganisation only if checked."""
    import importlib

    paths = set(re.findall(r"`((?:mnist_np|scripts|tests|conf|docs)/[\w./-]*\w)`", README))
    assert len(paths) >= 10  # the check sees the README's references
    assert sorted(p for p in paths if not (PROJECT_ROOT / p).exists()) == []
    dotted = set(re.findall(r"`(mnist_np(?:\.\w+)+)`", README))
    assert len(dotted) >= 2
    missing = []
    for name in sorted(dotted):
        module, attr = name, None
        while True:
            try:
                found = importlib.import_module(module)
                break
            except ModuleNotFoundError:
                module, _, tail = module.rpartition(".")
                attr = tail if attr is None else f"{tail}.{attr}"
        for part in (attr or "").split(".") if attr else []:
            found = getattr(found, part, None)
        if found is None:
            missing.append(name)
    assert missing == []
