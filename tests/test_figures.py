"""The measured figures of the README and the docs come from one record, docs/figures.json (scripts/figures.py):
the pages agree with it, an unmarked figure or a marker that drifted fails with its page and line, ``render``
mends a page, and ``record`` merges a benchmark's result. Fast: no benchmark runs here."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from helpers.scripts import load
from mnist_np.common.paths import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "scripts"))  # as `python scripts/figures.py` has it (bench_figures beside it)
FIGURES = load(PROJECT_ROOT / "scripts" / "figures.py", "figures")
HOOK = load(PROJECT_ROOT / "docs" / "hooks" / "generated.py", "docs_hook_figures")
MACHINE = {"cores": 4, "cpu": "Test CPU", "blas": "openblas 9.9 (Test)", "numpy": "9.9"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A copy of the pages and the record to break and mend."""
    (tmp_path / "docs").mkdir()
    shutil.copy(PROJECT_ROOT / "README.md", tmp_path / "README.md")
    for page in (PROJECT_ROOT / "docs").glob("*.md"):
        shutil.copy(page, tmp_path / "docs" / page.name)
    shutil.copy(PROJECT_ROOT / FIGURES.RECORD, tmp_path / FIGURES.RECORD)
    return tmp_path


# The start of a paragraph of prose on the Performance page, where the tests below write their figures.
PROSE = "In the caller, the products that work row by row"


def new_problems(root: Path, before: list[str]) -> list[str]:
    """What ``check`` reports in ``root`` beyond ``before`` (the copy's own, as the repository has them)."""
    return [p for p in FIGURES.problems(root) if p not in before]


@pytest.fixture
def before(root: Path) -> list[str]:
    return FIGURES.problems(root)


def edit(path: Path, old: str, new: str) -> int:
    """Replace the one ``old`` in ``path`` by ``new``; the line it was on."""
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))
    return text[:text.index(old)].count("\n") + 1


def test_the_pages_agree_with_the_record() -> None:
    assert FIGURES.problems() == []


def test_every_figure_has_its_value_date_machine_and_command() -> None:
    record = FIGURES.load()
    assert len(record["figures"]) >= 50  # the check sees the real record
    for key, figure in record["figures"].items():
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", figure["date"]), key
        assert figure["machine"] in record["machines"] and record["machines"][figure["machine"]]["cores"] >= 1, key
        assert figure["command"].strip() and figure["value"] not in (None, [], {}), key
        assert FIGURES.text_of(figure).strip(), key


def test_the_default_run_is_one_figure_on_both_pages() -> None:
    """The drift of issue 23: the README and the Performance page quoted two different default runs."""
    shown = {name: {m.group("key") for m in FIGURES.MARKER.finditer((PROJECT_ROOT / name).read_text())}
             for name in ("README.md", "docs/performance.md")}
    both = {"run.default.epochs_s", "run.default.outside_s", "run.default.peak_rss_gb"}
    assert both <= shown["README.md"] & shown["docs/performance.md"]


@pytest.mark.parametrize("figure", ["12.5 s", "3 ms", "40 µs", "5 min", "0.44 GB", "1.5 GiB", "12 %", "+10.4 %",
                                    "1.18x", "1.18×", "2.40–2.94×", "0.25 points", "−0.24 points", "0.9812",
                                    "139 GFLOP/s", "62.5 seconds"])
def test_an_unmarked_figure_fails_naming_page_and_line(root: Path, before: list[str], figure: str) -> None:
    line = edit(root / "docs" / "performance.md", PROSE, f"Measured again: {figure} here. {PROSE}")
    found = new_problems(root, before)
    assert len(found) == 1, found
    assert found[0].startswith(f"docs/performance.md:{line}: '{figure}'"), found


@pytest.mark.parametrize("text", ["`12.5 s`", "<!--given-->300 µs<!--/given-->", "at most 2 s apart", "≤ 1.15×",
                                  "up to 50 ms", "2×512 networks", "3 × refused", "on 2026-12-01", "lr 0.01",
                                  "4 shards", "20 epochs", "0.81 importance", "10,000 images"])
def test_what_is_not_a_measurement_passes(root: Path, before: list[str], text: str) -> None:
    edit(root / "docs" / "performance.md", PROSE, f"Not measured: {text}. {PROSE}")
    assert new_problems(root, before) == []


def test_a_figure_in_a_code_block_is_code(root: Path, before: list[str]) -> None:
    edit(root / "docs" / "performance.md", PROSE, f"```text\nepoch 1/3  0.45s  98.1%\n```\n\n{PROSE}")
    assert new_problems(root, before) == []


def test_a_marker_that_disagrees_with_the_record_fails_and_render_mends_it(root: Path, before: list[str]) -> None:
    readme = root / "README.md"
    marker = "<!--fig run.default.epochs_s-->{}<!--/fig-->"
    line = edit(readme, marker.format("9.9 s"), marker.format("4.6 s"))
    row = edit(root / "docs" / "performance.md", "| alone |", "| alone, edited |")  # a cell of contention.table
    found = new_problems(root, before)
    assert len(found) == 2, found
    assert found[0].startswith(f"README.md:{line}: figure run.default.epochs_s reads '4.6 s'") and "'9.9 s'" in found[0]
    table = [m for m in FIGURES.MARKER.finditer((root / "docs" / "performance.md").read_text())
             if m.group("key") == "contention.table"][0]
    start = (root / "docs" / "performance.md").read_text()[:table.start()].count("\n") + 1
    assert start < row and found[1].startswith(f"docs/performance.md:{start}: figure contention.table reads")
    assert sorted(p.name for p in FIGURES.render(root)) == ["README.md", "performance.md"]
    assert new_problems(root, before) == []
    assert (root / "README.md").read_text() == (PROJECT_ROOT / "README.md").read_text()
    assert (root / "docs" / "performance.md").read_text() == (PROJECT_ROOT / "docs" / "performance.md").read_text()


def test_a_marker_without_a_figure_and_a_figure_without_a_page_fail(root: Path, before: list[str]) -> None:
    edit(root / "docs" / "performance.md", "<!--fig run.import_mlflow_s-->", "<!--fig run.import_mlflow-->")
    edit(root / "docs" / "performance.md", "<!--fig loop.table:date-->", "<!--fig loop.table:when-->")
    found = new_problems(root, before)
    assert any(p.startswith("docs/performance.md:") and "figure run.import_mlflow is not in" in p for p in found)
    assert any(p.startswith("docs/performance.md:25: figure loop.table:when is not in") for p in found), found
    assert any("figure run.import_mlflow_s is on no page" in p for p in found)


def test_record_merges_a_benchmark_result_with_its_date_and_machine(root: Path, before: list[str]) -> None:
    result = {"benchmark": "run", "overrides": [], "runs": [{}] * 3, "costs_vs": {},
              "median": {"wall_s": 13.9, "epochs_s": 7.31, "outside_epochs_s": 6.58, "peak_rss_gb": 0.512},
              "speedup_saves_s": {"fast_exit": 1.234, "figures_in_background": -0.05, "skip_requirements_check": 0.6}}
    keys = FIGURES.record_result(result, "scripts/bench.py run --speedups --repeats 3", root, MACHINE, "2027-01-02")
    assert set(keys) == {"run.default.epochs_s", "run.default.outside_s", "run.default.peak_rss_gb",
                         "run.default.runs", "speedups.fast_exit", "speedups.figures_in_background",
                         "speedups.skip_requirements_check"}
    record = FIGURES.load(root)
    figure = record["figures"]["run.default.epochs_s"]
    assert figure["value"] == 7.31 and figure["date"] == "2027-01-02"
    assert figure["command"] == "scripts/bench.py run --speedups --repeats 3" and "source" not in figure
    assert record["machines"][figure["machine"]] == MACHINE
    untouched = FIGURES.load()["figures"]["run.import_mlflow_s"]
    assert record["figures"]["run.import_mlflow_s"] == untouched
    for page in ("README.md", "docs/performance.md"):  # both pages, rendered from the one figure
        assert "<!--fig run.default.epochs_s-->7.3 s<!--/fig-->" in (root / page).read_text()
    performance = (root / "docs" / "performance.md").read_text()
    assert "<!--fig speedups.figures_in_background-->−0.05 s of a default run (3 pairs)<!--/fig-->" in performance
    assert new_problems(root, before) == []


def test_record_fills_one_side_of_the_contention_table(root: Path, before: list[str]) -> None:
    rows = [{"condition": c, "threads": {"default": 1}, "default": 0.5, "threads=1": 0.25, "torch": 1.0,
             "default/threads=1": 2.0, "default/torch": 0.5, "augmented default/threads=1": 1.5}
            for c in ("alone", "taskset", "quota", "neighbour", "two at once")]
    kept = FIGURES.load(root)["figures"]["contention.table"]["value"][0]["before"]
    FIGURES.record_result({"benchmark": "contention", "code": str(root), "rows": rows}, "scripts/bench.py contention",
                          root, MACHINE, "2027-01-02")
    page = (root / "docs" / "performance.md").read_text()
    # before kept, after measured now
    assert (f"| alone | {kept['threads']} → 1 | {kept['default']:.3f} → 0.500 | {kept['threads1']:.3f} → 0.250 |"
            in page)
    assert "Measured on <!--fig contention.table:date-->2027-01-02<!--/fig--> on the 2-core machine" in page
    FIGURES.record_result({"benchmark": "contention", "code": "/tmp/before", "rows": rows},
                          "scripts/bench.py contention --code /tmp/before", root, MACHINE, "2027-01-02")
    assert "| alone | 1 → 1 | 0.500 → 0.500 |" in (root / "docs" / "performance.md").read_text()
    assert new_problems(root, before) == []


def test_record_fills_the_workers_table_from_bench_search_jobs(root: Path, before: list[str]) -> None:
    def runs(busy: float, seconds: float, best: float) -> list[dict]:
        return [{"busy_fraction": busy, "seconds": seconds + i, "best_val_accuracy": best - i / 1000} for i in range(3)]

    result = {"benchmark": "search", "jobs": 2, "pruners": ["successive_halving"],
              "runs": {"batch": runs(0.5, 60.0, 0.98), "async": runs(0.99, 30.0, 0.975)},
              "paired": {"async": {"median_time_ratio": 0.5, "median_val_accuracy_gap_pp": 0.5}}}
    FIGURES.record_result(result, "scripts/bench.py search --jobs 2", root, MACHINE, "2027-01-02")
    page = (root / "docs" / "sweeps.md").read_text()
    assert "| asynchronous | **0.99** / 0.99 / 0.99 | 30.0 / 31.0 / 32.0 s | 0.9750 / 0.9740 / 0.9730 |" in page
    assert "<!--fig search.workers.time_pct-->**50 %**<!--/fig-->" in page
    assert "<!--fig search.workers.gap_range-->+0.50 to +0.50<!--/fig-->" in page
    assert "<!--fig search.workers.table:date-->2027-01-02<!--/fig-->" in page
    assert new_problems(root, before) == []
    with pytest.raises(SystemExit, match="2 workers"):
        FIGURES.record_result({**result, "jobs": 4}, "scripts/bench.py search --jobs 4", root, MACHINE, "2027-01-02")


def test_record_refuses_what_the_pages_do_not_quote(root: Path) -> None:
    before = (root / FIGURES.RECORD).read_text()
    with pytest.raises(SystemExit, match="default run alone"):
        FIGURES.record_result({"benchmark": "run", "overrides": ["model.hidden_size=512"], "runs": [], "median": {}},
                              "scripts/bench.py run model.hidden_size=512", root, MACHINE, "2027-01-02")
    assert (root / FIGURES.RECORD).read_text() == before


def test_the_site_shows_the_figures_without_markers() -> None:
    page = HOOK.with_figures(HOOK.front_page())
    assert "<!--fig" not in page and "<!--/fig-->" not in page and "<!--given-->" not in page
    record = FIGURES.load()["figures"]
    assert f"**{FIGURES.text_of(record['results.default.test_accuracy'])}**" in page
    performance = HOOK.with_figures((PROJECT_ROOT / "docs" / "performance.md").read_text())
    table = FIGURES.text_of(record["waits.table"]).replace("\n", "\n  ")  # inside a list item, indented
    assert f"\n\n  {table}\n\n" in performance
