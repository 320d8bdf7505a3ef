"""The project's scripts (and other files run by path) imported or run in this process.

A subprocess of a script pays Python's and MLflow's start-up, seconds of
CPU, each time. Where a test's point is a script's output rather than
its command line -- a second flag on the same table, an error path --
:func:`run_script` calls its ``main()`` here, as ``python scripts/<name>.py
<args>`` would: the same ``sys.argv``, stdout and stderr captured, and
the exit status from its return value or from ``SystemExit`` (argparse).
One subprocess per script still shows its command line works.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from mnist_np.common.paths import PROJECT_ROOT

SCRIPTS = PROJECT_ROOT / "scripts"
_loaded: dict[tuple[Path, str], ModuleType] = {}


def load(path: Path, name: str) -> ModuleType:
    """The file at ``path`` imported as module ``name`` (once per process), as a hook or ``python <path>`` has it."""
    key = (Path(path), name)
    if key not in _loaded:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded[key] = module
    return _loaded[key]


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    """``scripts/<name>.py <args>`` run in this process: its exit status, stdout and stderr."""
    path = SCRIPTS / f"{name}.py"
    argv, environ, search_path = sys.argv, dict(os.environ), list(sys.path)
    sys.path.insert(0, str(SCRIPTS))  # as `python scripts/<name>.py` has it: its sibling modules importable
    sys.argv = [str(path), *args]
    out, err = io.StringIO(), io.StringIO()
    try:
        main = load(path, f"script_{name}").main
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main()
            except SystemExit as e:  # argparse's errors and --help; a message is printed as Python would print it
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv, sys.path[:] = argv, search_path
        os.environ.clear()
        os.environ.update(environ)
    return subprocess.CompletedProcess([str(path), *args], code or 0, out.getvalue(), err.getvalue())
