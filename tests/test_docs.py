"""The docs agree with the code: the generated configuration tables, the pictures, every path and module they
name, and the site itself, built with ``mkdocs build --strict``. (Their commands: tests/test_doc_commands.py.)"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from omegaconf import OmegaConf

from helpers.docs import DOCS, page, pages
from helpers.scripts import load
from mnist_np.common.paths import PROJECT_ROOT
from mnist_np.experiment.config.compose import compose
from mnist_np.experiment.config.schema import GROUP_SCHEMAS, Config, SearchSweeperConfig, schema_keys


def load_hook() -> ModuleType:
    """docs/hooks/generated.py, the MkDocs hook that makes the tables, imported by path as MkDocs does."""
    return load(DOCS / "hooks" / "generated.py", "docs_hook")


HOOK = load_hook()
ROW = re.compile(r"^\| `([a-z_.]+)` \| ([^|]*) \|", re.M)
SWEEPER = "hydra.sweeper."


def rows(table: str) -> dict[str, str]:
    """key -> default cell; a key listed twice fails here."""
    found = ROW.findall(table)
    keys = [k for k, _ in found]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
    return dict(found)


@pytest.fixture(scope="module")
def config_rows() -> dict[str, str]:
    return rows(HOOK.config_reference())


def test_the_pages_place_both_generated_tables() -> None:
    assert HOOK.CONFIG_KEYS in page("configuration.md")
    assert HOOK.SEARCH_KEYS in page("sweeps.md")


def test_every_schema_key_is_documented_once_and_nothing_else(config_rows: dict[str, str]) -> None:
    assert schema_keys() - set(config_rows) == set(), "keys missing from the configuration table"
    assert set(config_rows) - schema_keys() == set(), "the table documents keys the schema does not have"


def test_every_key_has_one_description_beside_its_field() -> None:
    """Described once: a key two schemas share (optimizer.lr) carries its text in exactly one of them."""
    for group, schemas in [("", (Config,)), *GROUP_SCHEMAS.items(), ("hydra.sweeper", (SearchSweeperConfig,))]:
        names = {f.name for s in schemas for f in dataclasses.fields(s)} - set(GROUP_SCHEMAS) - {"_target_"}
        for name in names:
            texts = [f.metadata["doc"] for s in schemas for f in dataclasses.fields(s)
                     if f.name == name and "doc" in f.metadata]
            assert len(texts) == 1 and texts[0].strip(), f"{group}.{name}: {len(texts)} descriptions"


def default_of(key: str) -> object:
    """The key's value in the default config, or in the first option of its group that has it
    (``optimizer.betas`` exists only for adam/adamw)."""
    from mnist_np.experiment.config.schema import group_options

    value = OmegaConf.select(compose(), key, default="<absent>")
    group = key.split(".")[0]
    for option in group_options(group) if value == "<absent>" else []:
        value = OmegaConf.select(compose([f"{group}={option}"]), key, default="<absent>")
        if value != "<absent>":
            break
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def render(value: object) -> str:
    """How the docs write a value: YAML-ish (null, true, [0.9, 0.999])."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(value) + "]"  # a list of names, as written in YAML
    return str(value)


@pytest.mark.parametrize("key", sorted(schema_keys()))
def test_documented_default_is_the_real_default(key: str, config_rows: dict[str, str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert f"`{render(default_of(key))}`" in config_rows[key], (key, config_rows[key])


def test_options_that_differ_are_each_documented() -> None:
    """Where the options of a group set a key differently, the table gives each option's value."""
    table = rows(HOOK.config_reference())
    assert table["optimizer.lr"] == "sgd `0.1`, adam/adamw `0.001`"
    assert table["optimizer.weight_decay"] == "sgd `0.0005`, adam `0.0`, adamw `0.01`"
    assert table["mlflow.tracking_uri"] == "`$MLFLOW_TRACKING_URI` or `null`"


def test_the_guided_search_keys_are_documented_with_their_defaults() -> None:
    """The table of ``hydra.sweeper.*`` for ``+sweep=optuna`` is the sweeper's schema, with the preset's values."""
    from mnist_np.experiment.config.compose import compose_sweep

    table = rows(HOOK.search_reference())
    documented = {k[len(SWEEPER):] for k in table if k.startswith(SWEEPER)}
    assert documented == {f.name for f in dataclasses.fields(SearchSweeperConfig)} - {"_target_"}
    sweep = compose_sweep(["--multirun", "+sweep=optuna"])
    assert sweep is not None
    preset = OmegaConf.to_container(sweep[0].hydra.sweeper, resolve=False)
    assert isinstance(preset, dict)
    for key in documented - {"params"}:
        assert f"`{render(preset[key])}`" in table[SWEEPER + key], (key, preset[key], table[SWEEPER + key])
    assert all(f"`{k}`" in table[SWEEPER + "params"] for k in preset["params"])


def test_the_front_page_is_the_readme_with_site_links() -> None:
    front = HOOK.front_page()
    assert "](docs/sweeps.md)" in page("README.md") and "](docs/images/confusion-matrix.png)" in page("README.md")
    assert "](docs/" not in front and "](sweeps.md)" in front and "](images/confusion-matrix.png)" in front
    assert len(page("README.md").splitlines()) <= 260  # a front page; the rest lives in docs/


def test_readme_pictures_exist_and_stay_small() -> None:
    """Every image a page shows is committed, a real PNG, and small enough to keep in git."""
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page("README.md"))
    assert {"docs/images/mlflow-compare.png", "docs/images/confusion-matrix.png"} <= set(images)
    for name, text in pages().items():
        base = PROJECT_ROOT / name
        for rel in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
            path = (base.parent / rel).resolve()
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", (name, rel)
            assert path.stat().st_size < 300_000, (name, rel)


def test_every_file_and_module_the_docs_name_exists() -> None:
    """The docs' references to the code (paths and dotted names) outlive a reorganisation only if checked."""
    text = "\n".join(pages().values())
    paths = set(re.findall(r"`((?:mnist_np|scripts|tests|conf|docs)/[\w./-]*\w)`", text))
    assert len(paths) >= 20  # the check sees the docs' references
    assert sorted(p for p in paths if not (PROJECT_ROOT / p).exists()) == []
    dotted = set(re.findall(r"`(mnist_np(?:\.\w+)+)`", text))
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


def test_every_page_is_in_the_nav() -> None:
    nav = (PROJECT_ROOT / "mkdocs.yml").read_text()
    written = {p.name for p in DOCS.glob("*.md")}
    assert written <= set(re.findall(r":\s*(\S+\.md)$", nav, re.M)), "a page the nav does not list"


# Slow, so `make test` builds the site but `make test-lowest` does not: that venv installs the
# oldest versions of .[test,sweeps] only, and MkDocs is no runtime or test library (the `docs` extra).
@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """``mkdocs build --strict``: a broken link or anchor, a page outside the nav or any warning fails it."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about its successor, not a build problem
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                           cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env=env)
    output = build.stdout + build.stderr
    assert build.returncode == 0, output[-3000:]
    assert "WARNING" not in output, output[-3000:]
    site = tmp_path / "site"
    config_page = (site / "configuration" / "index.html").read_text()
    assert all(key in config_page for key in ("optimizer.betas", "trainer.threads", "mlflow.register_as"))
    assert "hydra.sweeper.n_trials" in (site / "sweeps" / "index.html").read_text()
    assert 'src="images/mlflow-compare.png"' in (site / "index.html").read_text()
    assert not (site / "hooks").exists()
