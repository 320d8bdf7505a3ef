"""The command line users meet first: --help and Hydra's shell completion."""

from __future__ import annotations

import os
import re
import subprocess

from conftest import PYTHON, TRAIN_SCRIPT
from mnist_np.common.paths import CONF_DIR, PROJECT_ROOT
from mnist_np.experiment.config.schema import group_options


def train(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, str(TRAIN_SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          cwd=PROJECT_ROOT, env={**os.environ, **(env or {})})


def listed_groups(help_text: str) -> dict[str, list[str]]:
    """``group: a, b`` lines of the help's group and preset sections."""
    sections = re.findall(r"^== (?:Configuration groups|Presets).*?==\n(.*?)\n\n", help_text, re.M | re.S)
    return {g: [o.strip() for o in opts.split(",")] for block in sections
            for g, opts in re.findall(r"^(\w+): (.+)$", block, re.M)}


def test_help_lists_every_group_with_its_options_and_the_config() -> None:
    proc = train("--help")
    assert proc.returncode == 0, proc.stderr
    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    # conf/ and the help agree (the list is written by hand to hide the internal schema/ groups).
    assert listed_groups(proc.stdout) == {g: group_options(g) for g in groups}
    assert "schema" not in proc.stdout and "base_" not in proc.stdout  # only options a user may choose
    assert "  hidden_size: 128" in proc.stdout  # the composed config follows
    assert "-sc install=bash" in proc.stdout
    # The guided search's keys, each one the sweeper's schema has.
    import dataclasses

    from mnist_np.experiment.config.schema import SearchSweeperConfig

    section = proc.stdout.split("== Guided search", 1)[1].split("==", 2)[1]
    assert all(f.name in section for f in dataclasses.fields(SearchSweeperConfig) if f.name != "_target_")


def test_shell_completion_installs_and_completes_group_options() -> None:
    install = train("-sc", "install=bash")
    assert install.returncode == 0, install.stderr
    assert "hydra_bash_completion" in install.stdout
    line = "python scripts/train.py optimizer="
    query = train("-sc", "query=bash", env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert query.returncode == 0, query.stderr
    assert query.stdout.split() == ["optimizer=adam", "optimizer=adamw", "optimizer=sgd"]
