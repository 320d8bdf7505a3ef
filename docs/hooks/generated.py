"""MkDocs hook: the parts of the site that are made from something else, so they cannot drift.

- ``index.md`` is README.md, its links into ``docs/`` made relative to the
  site (``docs/sweeps.md`` -> ``sweeps.md``): the README stays the front page
  on a Git host and on the site alike.
- ``<!-- generated: config keys -->`` on a page becomes the table of every
  config key: its default from the composed config (per group option where
  the options differ) and its description from the schema's field metadata
  (:func:`mnist_np.experiment.config.schema.described`).
- ``<!-- generated: search keys -->`` becomes the table of ``hydra.sweeper.*``
  for ``+sweep=optuna``: the sweeper's schema with the preset's values.
- ``<!--fig KEY-->...<!--/fig-->`` becomes the figure ``KEY`` of the record,
  docs/figures.json, as ``scripts/figures.py`` renders it (the markers and
  ``<!--given-->`` go too): every measured figure comes from that one record.

Listed under ``hooks:`` in mkdocs.yml; tests/test_docs.py imports it by path
and checks its tables against the schema and the default config.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from types import ModuleType
from typing import Any

from omegaconf import OmegaConf

from mnist_np.common.paths import PROJECT_ROOT

CONFIG_KEYS = "<!-- generated: config keys -->"
SEARCH_KEYS = "<!-- generated: search keys -->"
ENV_DEFAULT = re.compile(r"^\$\{oc\.env:(\w+),(.*)\}$")  # ${oc.env:VAR,default}


def render(value: Any) -> str:
    """A default as the YAML says it, in backticks: ``null``, ``true``, ``[0.9, 0.999]``, ``$VAR`` or its fallback."""
    if isinstance(value, str) and (env := ENV_DEFAULT.match(value)):
        return f"`${env.group(1)}` or `{env.group(2)}`"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "`[" + ", ".join(value) + "]`"
    return f"`{value}`"


def description(schemas: tuple[type, ...], name: str) -> str:
    """The one description of a key, from the first of ``schemas`` whose field carries one."""
    for schema in schemas:
        for f in dataclasses.fields(schema):
            if f.name == name and "doc" in f.metadata:
                return f.metadata["doc"]
    raise ValueError(f"{name}: no description in {', '.join(s.__name__ for s in schemas)} (see schema.described)")


def group_default(group: str, name: str, values: dict[str, Any], default_option: str) -> str:
    """``sgd `0.1`, adam/adamw `0.001``` where the options differ; the one value where they agree (or for ``name``)."""
    if name == "name" or len({render(v) for v in values.values()}) == 1:
        return render(values.get(default_option, next(iter(values.values()))))
    by_value: dict[str, list[str]] = {}
    for option in sorted(values, key=lambda o: (o != default_option, o)):
        by_value.setdefault(render(values[option]), []).append(option)
    return ", ".join(f"{'/'.join(options)} {value}" for value, options in by_value.items())


def config_reference() -> str:
    """The configuration table: every schema key, its default and what it allows."""
    from mnist_np.experiment.config.compose import compose
    from mnist_np.experiment.config.schema import GROUP_SCHEMAS, Config, group_options

    default = OmegaConf.to_container(compose(), resolve=False)
    assert isinstance(default, dict)
    rows = ["| key | default | allowed / meaning |", "|---|---|---|"]
    for f in dataclasses.fields(Config):
        if f.name not in GROUP_SCHEMAS:
            rows.append(f"| `{f.name}` | {render(default[f.name])} | {description((Config,), f.name)} |")
    for group, schemas in GROUP_SCHEMAS.items():
        chosen = default[group].get("name")
        options = sorted(group_options(group), key=lambda o: (o != chosen, o))  # the default option first
        choices = " \\| ".join(f"`{group}={o}`" for o in options)  # a | inside a table cell is escaped
        rows.append(f"| **{group}** ({choices}) | | |")
        nodes = {o: OmegaConf.to_container(compose([f"{group}={o}"])[group], resolve=False) for o in options}
        names = list(dict.fromkeys(f.name for s in schemas for f in dataclasses.fields(s)))
        for name in names:
            values = {o: node[name] for o, node in nodes.items() if isinstance(node, dict) and name in node}
            cell = group_default(group, name, values, options[0])
            rows.append(f"| `{group}.{name}` | {cell} | {description(schemas, name)} |")
    return "\n".join(rows)


def search_reference() -> str:
    """The guided search's table: ``hydra.sweeper.*`` of ``+sweep=optuna``, with the preset's values."""
    from mnist_np.experiment.config.compose import compose_sweep
    from mnist_np.experiment.config.schema import SearchSweeperConfig

    sweep = compose_sweep(["--multirun", "+sweep=optuna"])
    assert sweep is not None
    preset = OmegaConf.to_container(sweep[0].hydra.sweeper, resolve=False)
    assert isinstance(preset, dict)
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(SearchSweeperConfig):
        if f.name == "_target_":
            continue
        value = ", ".join(f"`{k}`" for k in preset[f.name]) if f.name == "params" else render(preset[f.name])
        rows.append(f"| `hydra.sweeper.{f.name}` | {value} | {description((SearchSweeperConfig,), f.name)} |")
    return "\n".join(rows)


def figures_module() -> ModuleType:
    """scripts/figures.py, imported by path (scripts/ is no package): the one reader of the record."""
    spec = importlib.util.spec_from_file_location("figures", PROJECT_ROOT / "scripts" / "figures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_figures(markdown: str) -> str:
    """The page with every marked figure replaced by the record's text, markers gone."""
    figures = figures_module()
    return figures.rendered_page(markdown, figures.load(PROJECT_ROOT), keep_markers=False)


def front_page() -> str:
    """README.md with its links into docs/ made relative to the site."""
    text = (PROJECT_ROOT / "README.md").read_text()
    return re.sub(r"\]\(docs/", "](", text)


# --- MkDocs events ------------------------------------------------------------------


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    files.append(File.generated(config, "index.md", content=front_page()))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if CONFIG_KEYS in markdown:
        markdown = markdown.replace(CONFIG_KEYS, config_reference())
    if SEARCH_KEYS in markdown:
        markdown = markdown.replace(SEARCH_KEYS, search_reference())
    return with_figures(markdown)
