"""Every command the README and the docs show is one that works: checked here, or run by the test named for it.

- ``make <target> [VAR=value]``: the target exists (``make -n`` succeeds), every
  variable set is one the Makefile reads, and a project script its recipe
  runs is checked as below with the command's ``ARGS``;
- ``python scripts/train.py ...``: the command line goes through what the script
  does before it trains -- Hydra's flags and override parser, the per-key
  checks, composition against ``conf/`` (a sweep at each value worth
  composing), the value checks, a guided search's settings -- and passes, or
  fails with exactly the ``error:`` line a console block shows after it;
- another project script: its arguments parse with the script's own argparse parser;
- ``pip install``: only extras and packages pyproject.toml declares;
- ``mlflow ...``: MLflow's own command-line parser accepts the command;
- anything else: listed in :data:`RUN_ELSEWHERE` with the test that runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from omegaconf import OmegaConf

from helpers.docs import TAB, Command, code_blocks, pages, shown_commands, split_commands
from mnist_np.common.paths import PROJECT_ROOT
from mnist_np.experiment.config.schema import ConfigError

MAKEFILE = (PROJECT_ROOT / "Makefile").read_text()
PYPROJECT = (PROJECT_ROOT / "pyproject.toml").read_text()
SCRIPTS = ({p.relative_to(PROJECT_ROOT).as_posix() for p in (PROJECT_ROOT / "scripts").glob("*.py")}
           | {"tests/helpers/readme_images.py"})

# Programs the docs show that no parser here can check; each is run for real by the test named.
RUN_ELSEWHERE = {
    "optuna-dashboard": "tests/test_search.py::test_optuna_dashboard_opens_the_stored_study serves a "
                        "search's study with it",
    "curl": "tests/test_security.py sends the users/create request as the admin, tests/test_labels_and_registry.py "
            "the POST /invocations (both from Python, with the same URL, headers and body)",
    "createuser": "tests/test_postgres.py's team server: tests/helpers/postgres.py makes the role (initdb -U) and "
                  "the database (createdb)",
    "createdb": "tests/test_postgres.py's team server: tests/helpers/postgres.py runs createdb",
    "source": "activates the venv `make` builds; tests/test_labels_and_registry.py puts its bin/ first on "
              "PATH, as activating does",
    "export": "sets variables: tests/test_security.py sets the basic-auth server's and the user's as "
              "the page exports them",
}


def check(words: tuple[str, ...] | list[str], error: str | None = None) -> None:
    """Check one command (see the module's docstring); fails the test with what is wrong."""
    words = list(words)
    if words[0] == "sudo":  # sudo -u <user> <command>
        words = words[3:] if words[1] == "-u" else words[1:]
    program = Path(words[0]).name
    if program.startswith("python"):
        script = words[1]
        assert script in SCRIPTS, f"{script}: not a script of the project ({', '.join(sorted(SCRIPTS))})"
        (check_train if script == "scripts/train.py" else check_script)(script, words[2:], error)
        return
    assert error is None, f"only scripts/train.py's error lines are checked, not {program}'s"
    checks: dict[str, Callable[[list[str]], None]] = {"make": check_make, "pip": check_pip, "mlflow": check_mlflow,
                                                      "eval": check_eval}
    if program in checks:
        checks[program](words[1:])
    else:
        assert program in RUN_ELSEWHERE, f"{program}: not a command these tests check or list in RUN_ELSEWHERE"


# --- make ---------------------------------------------------------------------------


def check_make(args: list[str]) -> None:
    used = set(re.findall(r"\$\((\w+)\)", MAKEFILE))
    for assignment in (a for a in args if "=" in a):
        assert assignment.split("=")[0] in used, f"make {assignment}: the Makefile reads no such variable"
    dry = subprocess.run(["make", "-n", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    for line in dry.stdout.splitlines():  # the recipe's own calls of a project script, ARGS included
        for words in split_commands(line):
            if Path(words[0]).name.startswith("python") and len(words) > 1 and words[1] in SCRIPTS:
                check(words)


# --- scripts/train.py ---------------------------------------------------------------


def check_train(script: str, args: list[str], error: str | None) -> None:
    from hydra._internal.utils import get_args_parser

    from mnist_np.experiment.config.compose import check_overrides, compose, compose_sweep, sweep_variants
    from mnist_np.experiment.config.overrides import command_line_overrides, parse_overrides
    from mnist_np.experiment.config.validation import validate
    from mnist_np.experiment.search.sweeper import check_search

    for word in [w for w in args if TAB in w]:  # a completion demo: what is typed before Tab must lead somewhere
        check_completion(word.split(TAB)[0])
        args.remove(word)
    # A dry run checks what the command would run, as below; its members' configs are those without dry_run=true.
    args = [a for a in args if not a.startswith("dry_run=")]
    with contextlib.redirect_stderr(io.StringIO()) as stderr:
        try:
            get_args_parser().parse_args(args)  # Hydra's own flags, as @hydra.main reads them
        except SystemExit:
            pytest.fail(f"Hydra refuses the command line: {stderr.getvalue().strip()}")
    got = None
    try:
        overrides = command_line_overrides(args)
        if overrides is not None:  # None: shell completion, or a run's saved config as the primary one
            check_overrides(args, composition=False)
            check_search(compose_sweep(args))
            parsed = parse_overrides(overrides)
            configs = [compose(variant) for variant in sweep_variants(parsed)]
            for cfg in configs:
                validate(cfg)
            for key, value in swept_values(parsed):  # a swept key's other values change no key: set, not composed
                cfg = configs[0].copy()
                OmegaConf.update(cfg, key, value)
                validate(cfg)
    except ConfigError as e:
        got = f"error: invalid config: {e}"
    assert got == error, f"{script} {' '.join(args)}: says {got!r}" + (f", the docs show {error!r}" if error else "")


def swept_values(parsed: list[Any]) -> list[tuple[str, Any]]:
    """Every value of every swept key that is not a config group (``seed=0,1,2``, ``optimizer.lr=0.01,0.1``)."""
    from hydra.errors import HydraException

    from mnist_np.experiment.config.schema import GROUP_SCHEMAS, PRESET_GROUPS

    found = []
    for o in parsed:
        key = o.key_or_group.lstrip("+~")
        if not o.is_sweep_override() or key.startswith("hydra") or key in GROUP_SCHEMAS or key in PRESET_GROUPS:
            continue
        try:
            found += [(key, value) for value in o.sweep_iterator()]
        except HydraException:
            continue  # interval() and tag() search spaces: the sweeper draws their values
    return found


def check_completion(typed: str) -> None:
    from mnist_np.experiment.config.schema import GROUP_SCHEMAS, PRESET_GROUPS, group_options, schema_keys

    if typed.endswith("="):
        group = typed[:-1].lstrip("+")
        assert group in GROUP_SCHEMAS or group in PRESET_GROUPS, f"{typed}<TAB>: no config group {group}"
        assert group_options(group), f"{typed}<TAB>: the group has no options"
    else:
        assert any(k.startswith(typed) for k in schema_keys()), f"{typed}<TAB>: no config key starts so"


# --- the other scripts --------------------------------------------------------------


class Parsed(Exception):
    """Raised in place of running a script, once its parser has read the command line."""


def check_script(script: str, args: list[str], error: str | None) -> None:
    """The script's own ``main`` builds its parser; it is stopped right after ``parse_args``."""
    assert error is None, f"{script}: the docs show an error line; only scripts/train.py's are checked"
    parse_args = argparse.ArgumentParser.parse_args

    def parse_and_stop(self: argparse.ArgumentParser, *a: Any, **kw: Any) -> Any:
        raise Parsed(parse_args(self, *a, **kw))

    path = PROJECT_ROOT / script
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(path.parent))  # as `python <script>` has it (bench.py imports bench_sweeps beside it)
        main = runpy.run_path(str(path), run_name="doc_commands")["main"]
        mp.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
        mp.setattr(sys, "argv", [str(path), *args])
        with contextlib.redirect_stderr(io.StringIO()) as stderr:
            try:
                main()
            except Parsed:
                return
            except SystemExit:
                pytest.fail(f"{script} {' '.join(args)}: {stderr.getvalue().strip()}")
    pytest.fail(f"{script}: main() returned without parsing a command line")


# --- pip, mlflow, eval --------------------------------------------------------------


def check_pip(args: list[str]) -> None:
    assert args[0] == "install", f"pip {args[0]}: only pip install is shown"
    for requirement in (a for a in args[1:] if not a.startswith("-")):
        if requirement.startswith("."):  # the project itself, with extras
            for extra in re.findall(r"\w+", requirement.partition("[")[2]):
                assert re.search(rf"^{extra} = \[", PYPROJECT, re.M), (f"pip install {requirement}: no extra "
                                                                       f"{extra} in pyproject.toml")
        else:
            assert f'"{requirement}' in PYPROJECT, f"pip install {requirement}: pyproject.toml does not declare it"


def check_mlflow(args: list[str]) -> None:
    import click
    from mlflow.cli import cli

    command: click.Command = cli
    while isinstance(command, click.Group):
        name, *args = args
        found = command.get_command(click.Context(command), name)
        assert found is not None, f"mlflow: no command {name}"
        command = found
    try:
        command.make_context(command.name or "mlflow", list(args))
    except click.ClickException as e:
        pytest.fail(f"mlflow {command.name}: {e.format_message()}")


def check_eval(args: list[str]) -> None:
    (inner,) = re.findall(r"^\$\((.*)\)$", " ".join(args))
    for words in split_commands(inner):
        check(words)


# --- the tests ----------------------------------------------------------------------

COMMANDS = shown_commands()


@pytest.mark.parametrize("command", COMMANDS, ids=[str(c) for c in COMMANDS])
def test_every_command_the_docs_show_works(command: Command, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    check(command.words, command.error)


def test_the_check_sees_the_docs_commands_and_every_block_says_its_language() -> None:
    """A command in a block without a language would go unchecked: every block names one."""
    assert len(COMMANDS) >= 60
    assert {Path(c.words[0]).name for c in COMMANDS} >= {"make", "python", "mlflow", "pip"}
    assert sum(c.error is not None for c in COMMANDS) >= 2
    untagged = [b.where for name, text in pages().items() for b in code_blocks(name, text) if not b.lang]
    assert untagged == []


@pytest.mark.parametrize("words,error", [
    ("python scripts/train.py trainer.epoch=3", "not a config key"),
    ("python scripts/train.py --multirun model.hidden_size=64,0", "model.hidden_size=0 is not allowed"),
    ("python scripts/train.py --multirun optimizer=sgd,adam optimizer.momentum=0.5", "not a key of optimizer=adam"),
    ("python scripts/train.py --multirun +sweep=optuna hydra.sweeper.sampler=grid", "sampler"),
    ("python scripts/train.py optimiser=<TAB>", "no config group optimiser"),
    ("python scripts/compare.py --sort-by val_accuracy", "unrecognized arguments: --sort-by"),
    ("python scripts/predict.py x", "the following arguments are required: images"),
    ("python scripts/bench.py loop --repeat 3 --nope", "unrecognized arguments"),
    ("make trian", "No rule to make target"),
    ("make ui PROT=5001", "no such variable"),
    ("pip install -e .[doc]", "no extra doc"),
    ("mlflow models serve -m x --port-number 1", "No such option"),
    ("rm -rf outputs", "not a command these tests check"),
])
def test_the_check_fails_on_a_command_that_would_not_work(words: str, error: str) -> None:
    """Made-up commands, each wrong in one way, are caught and the failure says why."""
    (command,) = split_commands(words)
    with pytest.raises(BaseException, match=re.escape(error)) as failure:
        check(command)
    assert not isinstance(failure.value, (KeyboardInterrupt, SystemExit))
