"""The MLflow UI in a real headless Chromium, driven through Playwright (tests and README pictures).

Used by ``tests/test_browser.py`` and ``scripts/readme_images.py``; it needs
the ``test`` extra (``playwright``) and a system Chromium -- Playwright's own
browser download is never used, so this works where only package registries
are reachable. Set ``MNIST_NP_CHROMIUM`` to pick a browser binary.

:class:`MlflowUI` knows the few pages users look at, measured against
MLflow 3.17's UI (a React app; everything is waited for, never slept on):

- an experiment's runs table, ``#/experiments/<id>/runs``, with a sweep's
  parent row expanded to show its children;
- the compare page, ``#/compare-runs?runs=[...]&experiments=[...]``;
- a run's artifacts pane, ``#/experiments/<id>/runs/<run id>/artifacts``.

Every URL carries ``workflowType=machine_learning``: without it MLflow 3
opens its GenAI view, which hides the training-run pages.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:  # playwright is a test-extra dependency, imported only when a browser starts
    from playwright.sync_api import Browser, Locator, Page

CHROMIUM_ENV = "MNIST_NP_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# --no-sandbox: Chromium refuses to start as root with its sandbox on (CI runs as root).
# The rest keep a test browser from phoning home (no network here beyond loopback)
# and from spending the shared cores on a GPU process or updates.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
UI_TIMEOUT_MS = 60_000  # a cold UI on a busy 2-core machine can take many seconds per page
WORKFLOW = "workflowType=machine_learning"
ASSISTANT_CLOSE = "button[data-component-id='mlflow.assistant.chat_panel.close']"


def find_chromium() -> str | None:
    """A Chromium binary: ``$MNIST_NP_CHROMIUM``, else the first of :data:`CHROMIUM_NAMES` on PATH."""
    explicit = os.environ.get(CHROMIUM_ENV)
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


NO_CHROMIUM = (
    f"no Chromium found (${CHROMIUM_ENV}, or {', '.join(CHROMIUM_NAMES)} on PATH); "
    "install one, e.g. `apt-get install chromium` (.ci/run does this as root)"
)


@contextmanager
def chromium(executable: str | None = None) -> Iterator["Browser"]:
    """A headless system Chromium under Playwright, closed on exit.

    Raises:
        RuntimeError: no Chromium binary was found.
    """
    from playwright.sync_api import sync_playwright

    executable = executable or find_chromium()
    if executable is None:
        raise RuntimeError(NO_CHROMIUM)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class CompareTable:
    """What the compare page shows, read back from the page: one column per run."""

    run_names: list[str]
    params: dict[str, list[str]]  # param -> value per column
    metrics: dict[str, list[str]]  # metric -> displayed value per column


class MlflowUI:
    """The pages of one MLflow server's UI, in one browser page."""

    def __init__(self, page: "Page", base_url: str) -> None:
        self.page = page
        self.base_url = base_url.rstrip("/")
        page.set_default_timeout(UI_TIMEOUT_MS)

    # -- URLs ------------------------------------------------------------------
    def runs_url(self, experiment_id: str) -> str:
        return f"{self.base_url}/#/experiments/{experiment_id}/runs?{WORKFLOW}"

    def compare_url(self, experiment_id: str, run_ids: Sequence[str]) -> str:
        query = urllib.parse.urlencode({"runs": json.dumps(list(run_ids)), "experiments": json.dumps([experiment_id])})
        return f"{self.base_url}/#/compare-runs?{query}&{WORKFLOW}"

    def model_url(self, name: str) -> str:
        return f"{self.base_url}/#/models/{urllib.parse.quote(name)}"

    def artifacts_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.base_url}/#/experiments/{experiment_id}/runs/{run_id}/artifacts?{WORKFLOW}"

    # -- pages -----------------------------------------------------------------
    def open(self, url: str, ready_text: str) -> None:
        """Go to ``url`` and wait until ``ready_text`` is on the page (the React app has rendered)."""
        self.page.goto(url)
        self.page.get_by_text(ready_text, exact=True).first.wait_for()
        self.dismiss_assistant()

    def dismiss_assistant(self) -> None:
        """Close MLflow's chat side panel if it is open: it covers a third of every screenshot."""
        close = self.page.locator(ASSISTANT_CLOSE)
        if close.count() and close.first.is_visible():
            close.first.click()

    def run_name_cells(self) -> list[str]:
        """The names in the runs table's "Run Name" column, top to bottom."""
        cells = self.page.locator("[role=gridcell][col-id='attributes.`Run Name`'] a")
        return [t.strip() for t in cells.all_inner_texts()]

    def runs_table(self, experiment_id: str, parent_name: str,
                   child_names: Sequence[str]) -> tuple[list[str], list[str]]:
        """Open the runs table, expand the sweep's parent row and wait for its children.

        Returns the names shown before and after expanding: a fresh browser
        shows the parent collapsed, so children that appear only after the
        click are really nested under it.
        """
        self.open(self.runs_url(experiment_id), parent_name)
        collapsed = self.run_name_cells()
        if not all(name in collapsed for name in child_names):
            parent_cell = self.page.locator("[col-id='attributes.`Run Name`']").filter(has_text=parent_name).first
            parent_cell.get_by_role("button").first.click()  # the +/- expander left of the name
        for name in child_names:
            self.page.get_by_text(name, exact=True).first.wait_for()
        return collapsed, self.run_name_cells()

    def section(self, title: str) -> "Locator":
        """One collapsible section of the compare page ("Run details", "Parameters", "Metrics", ...)."""
        header = self.page.locator(".du-bois-light-collapse-header").filter(has_text=title).first
        return header.locator("xpath=..")

    def compare(self, experiment_id: str, run_ids: Sequence[str], metrics: Sequence[str]) -> CompareTable:
        """Open the compare page of ``run_ids`` and read its run names, every param and ``metrics`` per column."""
        self.open(self.compare_url(experiment_id, run_ids), "Run details")
        names = self._table(self.section("Run details"))["Run Name:"]
        params = self._table(self.section("Parameters"))
        return CompareTable(run_names=names, params=params, metrics={m: self._metric_row(m) for m in metrics})

    @staticmethod
    def _table(section: "Locator") -> dict[str, list[str]]:
        """A plain table's rows: header cell -> the other cells, left to right."""
        rows = {}
        for row in section.locator("tr").all():
            cells = [c.strip() for c in row.locator("th, td").all_inner_texts()]
            if cells:
                rows[cells[0]] = cells[1:]
        return rows

    def _metric_row(self, metric: str) -> list[str]:
        """A metric's values, left to right. The metrics table is a virtualised grid of
        absolutely placed cells: the name cell and its values share a ``top`` offset."""
        section = self.section("Metrics")
        name = section.locator("a[title='Plot chart']").filter(has=self.page.get_by_text(metric, exact=True))
        section.locator(".ReactVirtualized__Grid").first.wait_for()
        # Only the rows in view are rendered: with many metrics (system/*) scroll down to it.
        for _ in range(30):
            if name.count():
                break
            section.locator(".ReactVirtualized__Grid").evaluate_all(
                "grids => grids.forEach(g => { g.scrollTop += Math.max(g.clientHeight - 30, 30); })")
            self.page.wait_for_timeout(200)
        name.first.wait_for()
        return name.first.evaluate(
            """(a) => {
                const cell = a.parentElement;
                const grids = [...cell.closest('.du-bois-light-collapse-content-box').querySelectorAll('.ReactVirtualized__Grid')];
                const values = grids.find(g => !g.contains(cell));
                return [...values.querySelectorAll(':scope > div > div')]
                    .filter(c => c.style.top === cell.style.top)
                    .sort((x, y) => parseFloat(x.style.left) - parseFloat(y.style.left))
                    .map(c => c.innerText.trim());
            }"""  # noqa: E501 -- JavaScript, run as it stands
        )

    def artifacts(self, experiment_id: str, run_id: str, open_file: tuple[str, str] | None = None) -> list[str]:
        """Open a run's artifacts pane; returns the top-level entries of its tree (folders first).

        ``open_file=("plots", "confusion_matrix.png")`` then unfolds that folder and previews the file.
        """
        self.open(self.artifacts_url(experiment_id, run_id), "Artifacts")
        # Tree entries are an icon (fa-folder, fa-file-*) beside the name.
        icons = self.page.locator("i.fa-folder, i[class*='fa-file']")
        icons.first.wait_for()
        entries = [t.strip() for t in icons.locator("xpath=..").all_inner_texts()]
        if open_file:
            folder, file = open_file
            self.page.get_by_text(folder, exact=True).first.click()
            self.page.get_by_text(file, exact=True).first.click()
            self.page.locator(f"img[alt='{folder}/{file}']").first.wait_for()
        return entries

    def registered_model(self, name: str, version: str) -> str:
        """Open a registered model's page in the Model Registry; returns the text of its versions table once ``Version
        <n>`` shows."""
        self.open(self.model_url(name), name)
        self.page.get_by_text(f"Version {version}", exact=True).first.wait_for()
        return self.page.locator("table, [role=table]").first.inner_text()

    def select_metrics_in_plot(self, metrics: Sequence[str]) -> None:
        """Show ``metrics`` (and only them) in the compare page's parallel-coordinates plot."""
        select = self.page.locator(".du-bois-light-select").nth(1)  # 0: parameters, 1: metrics
        chosen = [t.strip() for t in select.locator(".du-bois-light-select-selection-item").all_inner_texts()]
        for name in [m for m in chosen if m not in metrics] + [m for m in metrics if m not in chosen]:
            select.click()  # toggles the option: deselects the unwanted, selects the wanted
            dropdown = self.page.locator(".du-bois-light-select-dropdown:visible")
            option = dropdown.locator(f".du-bois-light-select-item-option[title='{name}']")
            for _ in range(20):  # a virtual list renders only the options in view
                if option.count():
                    break
                dropdown.locator(".rc-virtual-list-holder").hover()
                self.page.mouse.wheel(0, 120)
                self.page.wait_for_timeout(100)
            option.click()
            self.page.keyboard.press("Escape")

    def show_diff_only(self, sections: Sequence[str] = ("Parameters", "Metrics")) -> None:
        """Turn on the compare page's "Show diff only" switch of each section."""
        for section in sections:
            switch = self.page.get_by_role("switch", name=f"{section} - Show diff only")
            if switch.get_attribute("aria-checked") != "true":
                switch.click()

    def screenshot(self, path: Path, top: "Locator | None" = None, bottom: "Locator | None" = None,
                   margin: int = 12) -> Path:
        """Save a PNG of the viewport, or of the band from ``top``'s top edge to ``bottom``'s
        bottom edge, as wide as the widest of the two (plus ``margin`` pixels around)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if top is None or bottom is None:
            self.page.screenshot(path=str(path))
            return path
        a, b = top.bounding_box(), bottom.bounding_box()
        if a is None or b is None:
            raise RuntimeError(f"cannot clip {path.name}: an element to clip to is not on screen")
        x0, y0 = min(a["x"], b["x"]) - margin, a["y"] - margin
        x1 = max(a["x"] + a["width"], b["x"] + b["width"]) + margin
        y1 = b["y"] + b["height"] + margin
        self.page.screenshot(path=str(path),
                             clip={"x": max(x0, 0), "y": max(y0, 0), "width": x1 - max(x0, 0),
                                   "height": y1 - max(y0, 0)})
        return path
