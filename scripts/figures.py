"""The measured figures of the README and the docs, from one record: docs/figures.json.

    python scripts/figures.py check                         # every page agrees with the record; no unmarked figure
    python scripts/figures.py render                        # rewrite every marked figure on the pages from the record
    python scripts/figures.py record outputs/bench-run.json # merge a benchmark's result (today, this machine), render

A figure in the record has a key, its value(s), a format that makes the
text a page shows, the date it was measured, the machine (an entry of
``machines``, defined once) and the command that measured it. A page shows
it between markers that render invisibly::

    spends <!--fig run.default.outside_s-->8.8 s<!--/fig--> outside its epochs

    <!--fig contention.table-->

    | condition | ... |

    <!--/fig-->

The block form (markers alone on their lines, blank lines inside) holds a
whole table, indented as its opening marker is. ``<!--fig KEY:date-->`` and
``<!--fig KEY:machine-->`` show the date and the machine of the figure. The docs hook
(docs/hooks/generated.py) replaces every marker with the record's text when
the site is built; GitHub shows README.md as it is, so ``render`` keeps the
text between the markers equal to the record and ``check`` fails where it is not.

``check`` also fails on a figure-shaped number outside the markers (see
:data:`FIGURE`): a time, a size, a percentage, a ratio, a GEMM rate, points
or an accuracy. A number that is not a measurement (a setting, a limit, a
target, a cited or computed number) is marked ``<!--given-->300 µs<!--/given-->``;
numbers in code (fenced blocks, inline code) and after a limit's words
(≤, ≥, at most, at least, up to) are never figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import string
import sys
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RECORD = "docs/figures.json"

MARKER = re.compile(r"<!--fig (?P<key>[\w.\-]+(?::\w+)?)-->(?P<body>.*?)<!--/fig-->", re.S)
GIVEN = re.compile(r"<!--given-->(?P<body>.*?)<!--/given-->", re.S)
COMMENT = re.compile(r"<!--.*?-->", re.S)
INLINE_CODE = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
NUMBER = r"[+\-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
UNIT = r"(?:s|ms|µs|us|min|h|seconds?|GB|GiB|MB|MiB|%|(?<=\d)[x×]|points?|GFLOP/s)"
# A measured-looking number: a value (or a range of two) with a unit of time, size, share or speed-up, points,
# a GEMM rate -- or an accuracy written as a fraction (0.5 to 1, at least three decimals).
FIGURE = re.compile(rf"(?<![\w.]){NUMBER}(?:\s?[–-]\s?{NUMBER})?\s?{UNIT}(?![\w/])|(?<![\w.])0\.[5-9]\d{{2,}}(?![\w.])")
LIMIT = re.compile(r"(?:≤|≥|<|>|at most|at least|up to)\s*$")


class Typographic(string.Formatter):
    """str.format, with a negative number's sign written as the pages write it: a true minus (−0.24)."""

    def format_field(self, value: Any, format_spec: str) -> str:
        text = super().format_field(value, format_spec)
        return "−" + text[1:] if isinstance(value, (int, float)) and text.startswith("-") else text


FORMATTER = Typographic()


def fill(template: str, value: Any) -> str:
    """``template`` filled with ``value``: a list by position, a dict by name, anything else as ``{0}``."""
    if isinstance(value, list):
        return FORMATTER.format(template, *value)
    if isinstance(value, dict):
        return FORMATTER.format(template, **value)
    return FORMATTER.format(template, value)


def text_of(figure: dict) -> str:
    """What a page shows for ``figure``: its format filled with its value; a table's header, then one line per
    row (each row its own format, filled with that row's value)."""
    fmt = figure["format"]
    if isinstance(fmt, dict):
        rows = figure["value"]
        if len(rows) != len(fmt["rows"]):
            raise ValueError(f"{len(rows)} rows of values for {len(fmt['rows'])} row formats")
        return "\n".join([*fmt["header"], *(fill(f, v) for f, v in zip(fmt["rows"], rows))])
    return fill(fmt, figure["value"])


def machine_text(machine: dict) -> str:
    """A machine as a page names it: ``2 cores, AMD EPYC, openblas 0.3.31.188.0 (SkylakeX), numpy 2.4.6``."""
    parts = [f"{machine['cores']} cores" if "cores" in machine else "", machine.get("cpu", ""), machine.get("blas", ""),
             f"numpy {machine['numpy']}" if "numpy" in machine else ""]
    return ", ".join(p for p in parts if p)


def shown(record: dict, key: str) -> str | None:
    """What a marker of ``key`` shows: the figure's text; ``KEY:date`` the date it was measured, ``KEY:machine``
    the machine it was measured on. None for a key the record does not have."""
    name, _, view = key.partition(":")
    figure = record["figures"].get(name)
    if figure is None or view not in ("", "date", "machine"):
        return None
    if view == "date":
        return figure["date"]
    return machine_text(record["machines"].get(figure["machine"], {})) if view == "machine" else text_of(figure)


# --- the record ---------------------------------------------------------------------


def load(root: Path = ROOT) -> dict:
    return json.loads((root / RECORD).read_text())


def dumps(value: Any, indent: str = "") -> str:
    """JSON that reads like the pages: a value that fits on one line stays on one (a row of a table, a value)."""
    flat = json.dumps(value, ensure_ascii=False)
    if len(indent) + len(flat) <= 116 or not isinstance(value, (dict, list)) or not value:
        return flat
    inner = indent + "  "
    items = ([f"{inner}{json.dumps(k, ensure_ascii=False)}: {dumps(v, inner)}" for k, v in value.items()]
             if isinstance(value, dict) else [f"{inner}{dumps(v, inner)}" for v in value])
    brackets = "{}" if isinstance(value, dict) else "[]"
    return brackets[0] + "\n" + ",\n".join(items) + "\n" + indent + brackets[1]


def save(record: dict, root: Path = ROOT) -> None:
    """Written to a temporary file and renamed: a reader never sees half a record."""
    path = root / RECORD
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(dumps(record) + "\n")
    os.replace(tmp, path)


def pages(root: Path = ROOT) -> list[Path]:
    """The pages a reader sees: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


# --- markers ------------------------------------------------------------------------


def indent_of(text: str, start: int) -> str | None:
    """The whitespace before ``start`` on its line, or None when other text precedes it (an inline marker)."""
    before = text[text.rfind("\n", 0, start) + 1:start]
    return before if not before.strip() else None


def body_for(text: str, match: re.Match, rendered: str) -> str:
    """What goes between the markers of ``match`` for a figure that renders as ``rendered``: the text itself
    inline; in the block form, blank lines around it and every line indented as the opening marker."""
    indent = indent_of(text, match.start())
    if indent is None or not match.group("body").startswith("\n"):
        return rendered
    lines = "\n".join(indent + line if line else "" for line in rendered.split("\n"))
    return f"\n\n{lines}\n\n{indent}"


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def code(text: str) -> list[tuple[int, int]]:
    """Where the page shows code: its fenced blocks and inline code spans (a marker there is an example)."""
    spans, offset, opened = [], 0, None
    for line in text.splitlines(keepends=True):
        if re.match(r"^\s*(```|~~~)", line):
            if opened is None:
                opened = offset
            else:
                spans.append((opened, offset + len(line)))
                opened = None
        offset += len(line)
    rest = text
    for start, end in spans:
        rest = blank(rest, start, end)
    return spans + [m.span() for m in INLINE_CODE.finditer(rest)]


def markers(text: str, pattern: re.Pattern = MARKER) -> list[re.Match]:
    """The markers of a page outside its code."""
    spans = code(text)
    return [m for m in pattern.finditer(text) if not any(a <= m.start() < b for a, b in spans)]


def rendered_page(text: str, record: dict, keep_markers: bool = True) -> str:
    """``text`` with every marker's body made from the record; without ``keep_markers`` (the site), the markers
    themselves gone too. An unknown key keeps its body (``check`` names it)."""
    out, pos = [], 0
    found = markers(text) + ([] if keep_markers else markers(text, GIVEN))
    for match in sorted(found, key=lambda m: m.start()):
        if match.re is GIVEN:
            body = match.group("body")
        elif (figure := shown(record, match.group("key"))) is None:
            body = match.group(0)
        else:
            body = body_for(text, match, figure)
            body = f"<!--fig {match.group('key')}-->{body}<!--/fig-->" if keep_markers else body
        out += [text[pos:match.start()], body]
        pos = match.end()
    return "".join([*out, text[pos:]])


def blank(text: str, start: int, end: int) -> str:
    """``text`` with [start, end) turned into spaces, newlines kept: the line numbers after it stay right."""
    return text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]


def prose(text: str) -> str:
    """The page with what is never a figure blanked out: fenced code blocks, inline code, marked figures,
    given numbers and other HTML comments."""
    for start, end in code(text):
        text = blank(text, start, end)
    for pattern in (MARKER, GIVEN, COMMENT):
        for match in reversed(list(pattern.finditer(text))):
            text = blank(text, match.start(), match.end())
    return text


def unmarked(name: str, text: str) -> list[str]:
    """``page:line: 'figure'`` for every figure-shaped number of the page's prose outside the markers."""
    clean = prose(text)
    found = []
    for match in FIGURE.finditer(clean):
        if LIMIT.search(clean[max(0, match.start() - 12):match.start()]):
            continue
        found.append(f"{name}:{line_of(clean, match.start())}: '{match.group(0).strip()}' is a measured-looking "
                     "figure outside the record: mark it <!--fig KEY-->...<!--/fig--> with KEY in "
                     f"{RECORD}, or <!--given-->...<!--/given--> if it is not a measurement")
    return found


def problems(root: Path = ROOT, record: dict | None = None) -> list[str]:
    """Everything ``check`` reports: markers that disagree with the record or name no figure, unmarked figures,
    figures of the record no page shows, figures whose machine is not defined."""
    record = record if record is not None else load(root)
    figures, machines = record["figures"], record["machines"]
    found, seen = [], set()
    for path in pages(root):
        name, text = str(path.relative_to(root)), path.read_text()
        for match in markers(text):
            key, where = match.group("key"), f"{name}:{line_of(text, match.start())}"
            seen.add(key.partition(":")[0])
            if (text_shown := shown(record, key)) is None:
                found.append(f"{where}: figure {key} is not in {RECORD}")
            elif match.group("body") != (want := body_for(text, match, text_shown)):
                found.append(f"{where}: figure {key} reads {match.group('body').strip()!r} where the record "
                             f"says {want.strip()!r} (python scripts/figures.py render)")
        found += unmarked(name, text)
    for key, figure in figures.items():
        missing = [f for f in ("value", "format", "date", "machine", "command") if f not in figure]
        if missing:
            found.append(f"{RECORD}: figure {key} has no {', '.join(missing)}")
        elif figure["machine"] not in machines:
            found.append(f"{RECORD}: figure {key} names machine {figure['machine']!r}, which is not defined")
        if key not in seen:
            found.append(f"{RECORD}: figure {key} is on no page")
    return found


def render(root: Path = ROOT, record: dict | None = None) -> list[Path]:
    """Rewrite every marker's text on the pages from the record; the pages that changed."""
    record = record if record is not None else load(root)
    changed = []
    for path in pages(root):
        text = path.read_text()
        new = rendered_page(text, record)
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


# --- recording a benchmark's result ---------------------------------------------------


def merge(record: dict, values: dict[str, Any], command: str, machine: dict, today: str) -> list[str]:
    """Put ``values`` (figure key -> new value) into ``record`` with ``today``, ``machine`` (added to
    ``machines`` unless an equal entry is there) and ``command``; each figure keeps its format. The keys merged."""
    machine_id = next((k for k, m in record["machines"].items() if m == machine), None)
    if machine_id is None:
        base = machine_id = f"{machine.get('cores', '?')}-core {machine.get('blas', '')}".strip()
        n = 1
        while machine_id in record["machines"]:
            n += 1
            machine_id = f"{base} ({n})"
        record["machines"][machine_id] = machine
    for key, value in values.items():
        if key not in record["figures"]:
            raise KeyError(f"{key}: not in {RECORD}; add it with a format first")
        figure = record["figures"][key]
        figure.update(value=value, date=today, machine=machine_id, command=command)
        figure.pop("source", None)  # it was measured now, by the command, not traced back
        text_of(figure)  # a value that does not fit the format fails here, before anything is written
    return list(values)


def this_machine() -> dict:
    """Cores, CPU model, BLAS (threadpoolctl's view) and numpy of this machine."""
    import numpy as np
    from threadpoolctl import threadpool_info

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?") if Path("/proc/cpuinfo").exists() else "?"
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return {"cores": len(os.sched_getaffinity(0)), "cpu": model,
            "blas": f"{blas[0]['internal_api']} {blas[0]['version']} ({blas[0]['architecture']})" if blas else "?",
            "numpy": np.__version__}


def record_result(result: dict, command: str, root: Path = ROOT, machine: dict | None = None,
                  today: str | None = None) -> list[str]:
    """Merge a benchmark's result into the record (what :func:`bench_figures.figures_of` makes of it), save it and
    re-render the pages. The keys recorded."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_figures import figures_of  # beside this file

    record = load(root)
    keys = merge(record, figures_of(result, record["figures"], root), command, machine or this_machine(),
                 today or date.today().isoformat())
    save(record, root)
    render(root, record)
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("check", help="the pages agree with the record, and no figure is unmarked")
    sub.add_parser("render", help="rewrite every marked figure on the pages from the record")
    r = sub.add_parser("record", help="merge a benchmark's JSON result into the record, then render")
    r.add_argument("result", type=Path, help="the JSON a scripts/bench.py command wrote")
    r.add_argument("--command", default=None, help="the command that measured it (default: from the JSON)")
    args = parser.parse_args()
    if args.what == "check":
        found = problems()
        print("\n".join(found) or f"the pages agree with {RECORD}")
        raise SystemExit(1 if found else 0)
    if args.what == "render":
        changed = render()
        print("\n".join(f"rendered {p.relative_to(ROOT)}" for p in changed) or "nothing to change")
        return
    result = json.loads(args.result.read_text())
    command = args.command or result.get("command") or f"scripts/bench.py {result['benchmark']}"
    for key in record_result(result, command):
        print(f"recorded {key}")


if __name__ == "__main__":
    main()
