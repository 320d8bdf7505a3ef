"""The documentation as the tests read it: README.md, the pages under docs/, and the commands their code blocks show.

    page("clusters.md")   # the text of docs/clusters.md ("README.md": the front page)
    shown_commands()      # every command of every bash/console/sh block, ready to check

A command is cut into words as a shell would (quotes, backslash line
continuations, comments), split at ``&&``, ``||``, ``;`` and ``|``, with
redirections dropped. Placeholders in angle brackets stand for any value and
become ``x`` (``<RUN_ID>``, ``outputs/runs/<date>/<time>``); ``<TAB>`` (a
completion demo) becomes :data:`TAB`, for the checker to read.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from mnist_np.common.paths import PROJECT_ROOT

DOCS = PROJECT_ROOT / "docs"
SHELL_LANGS = ("bash", "console", "sh")
TAB = "\x00TAB"  # where a completion demo presses Tab
PLACEHOLDER = re.compile(r"<(?!TAB>)[A-Za-z][^<>\n]*>")
SEPARATORS = {"&&", "||", ";", "|"}
REDIRECTS = {">", ">>", "<", "2>", "2>>", "&>"}


def page(name: str) -> str:
    """The text of ``docs/<name>``, or of the front page for ``README.md``."""
    return (PROJECT_ROOT / name if name == "README.md" else DOCS / name).read_text()


def pages() -> dict[str, str]:
    """Every page a reader sees, by its path from the project root: README.md and docs/**.md."""
    found = {"README.md": page("README.md")}
    found |= {str(p.relative_to(PROJECT_ROOT)): p.read_text() for p in sorted(DOCS.rglob("*.md"))}
    return found


@dataclass(frozen=True)
class Block:
    where: str  # "docs/sweeps.md:95": the page and the line of the opening fence
    lang: str
    lines: tuple[str, ...]


def code_blocks(name: str, text: str) -> list[Block]:
    """The fenced code blocks of a page, with their info strings (``""`` for none)."""
    blocks, opened, lang, body = [], None, "", []
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```(\w*)", line)
        if fence and opened is None:
            opened, lang, body = number, fence.group(1), []
        elif fence:
            blocks.append(Block(f"{name}:{opened}", lang, tuple(body)))
            opened = None
        elif opened is not None:
            body.append(line)
    assert opened is None, f"{name}:{opened}: a code block is never closed"
    return blocks


@dataclass(frozen=True)
class Command:
    where: str  # the page and the block's line
    words: tuple[str, ...]
    error: str | None = None  # a console block's `error: ...` line right after the command: the output it must give

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.words).replace(TAB, '<TAB>')}"


def split_commands(line: str) -> list[list[str]]:
    """One shell line as commands of words (see the module's docstring)."""
    lexer = shlex.shlex(PLACEHOLDER.sub("x", line.replace("<TAB>", TAB)), posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    words = list(lexer)
    i = 0
    while i < len(words):
        word = words[i]
        if word in SEPARATORS:
            commands.append([])
        elif word in REDIRECTS or (word.isdigit() and i + 1 < len(words) and words[i + 1] in REDIRECTS):
            i += 1 if word.isdigit() else 2  # the redirection and its target
            continue
        else:
            commands[-1].append(word)
        i += 1
    return [c for c in commands if c]


def block_commands(block: Block) -> list[Command]:
    """The commands a shell block shows: every line of a bash/sh block; the ``$ `` lines of a console block."""
    found: list[Command] = []
    if block.lang == "console":
        lines = list(block.lines)
        for i, line in enumerate(lines):
            if line.startswith("$ "):
                after = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith("$ ") else ""
                error = after if after.startswith("error: ") else None
                found += [Command(block.where, tuple(words), error) for words in split_commands(line[2:])]
        return found
    text = re.sub(r"\\\n\s*", " ", "\n".join(block.lines))  # backslash continuations
    for line in text.splitlines():
        found += [Command(block.where, tuple(words)) for words in split_commands(line)]
    return found


def shown_commands() -> list[Command]:
    """Every command in a bash, console or sh block of README.md and docs/."""
    return [c for name, text in pages().items() for b in code_blocks(name, text) if b.lang in SHELL_LANGS
            for c in block_commands(b)]
