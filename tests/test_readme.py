"""Every fenced ``distill`` command of the README and of ``docs/*.md`` runs as written, as far as
can be told without running it: the command parses with the real ``distill`` parser, and the
config it names (a preset or a YAML file of the repository) loads and validates with its ``--set``
overrides (every grid point for ``distill sweep``). A documented session (``$ distill ...``
followed by ``distill: error: ...``) must fail with exactly that error. Every fenced YAML example
that is a whole config (it has a ``name``) validates too. Nothing runs and Ray is not started."""

from __future__ import annotations

import itertools
import re
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from core.errors import ConfigError
from pipeline.cli.main import build_parser
from pipeline.cli.sweep import parse_grid
from pipeline.config.loading import load_config, preset_names, validate_config
from teachers.catalog import CATALOG

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIG_COMMANDS = frozenset({"run", "validate", "submit", "sweep", "show", "bench"})
"""Subcommands whose positional argument is a run config."""

SKIPPED = {
    "ag-news.yaml": "the README's own-data example: the reader writes it from the YAML block above it, which "
                    "test_whole_config_examples_validate checks",
    "tiny.yaml": "the tiny teacher's config that tests/pipeline/cli/test_submit.py writes into its temporary folder",
}
"""Configs named by documented commands that exist only on the reader's machine, with the reason."""

FENCE = re.compile(r"^[ \t]*```(\w*)[ \t]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
ERROR_PREFIX = "distill: error: "


@dataclass(frozen=True)
class Command:
    """One documented ``distill`` command.

    Attributes:
        where: ``<file>: <command line>``, for test ids and messages.
        argv: the words after ``distill``.
        error: the error text the document shows it printing (after ``distill: error:``,
            whitespace-normalised), or None when it shows none.
    """

    where: str
    argv: list[str]
    error: str | None


def fenced_blocks(path: Path) -> list[tuple[str, list[str]]]:
    """``(language, lines)`` of every fenced block of a Markdown file, dedented as a whole (a block
    inside a list item is indented)."""
    return [(lang, textwrap.dedent(body).splitlines()) for lang, body in FENCE.findall(path.read_text(encoding="utf-8"))]


def block_commands(path: Path, lines: list[str]) -> list[Command]:
    """The ``distill`` commands of one block: lines (or ``&&``-joined parts of lines) that start
    with ``distill `` or ``$ distill ``; a ``$`` line's output runs to the next ``$`` line."""
    commands, lines = [], [line.strip() for line in lines]
    for i, line in enumerate(lines):
        session = line.startswith("$ ")
        for part in line.removeprefix("$ ").split("&&"):
            part = part.strip()
            if not part.startswith("distill "):
                continue
            output = []
            if session:
                output = list(itertools.takewhile(lambda text: not text.startswith("$ "), lines[i + 1:]))
            shown = " ".join(output)
            error = " ".join(shown.split(ERROR_PREFIX, 1)[1].split()) if shown.startswith(ERROR_PREFIX) else None
            commands.append(Command(f"{path.name}: {part}", shlex.split(part)[1:], error))
    return commands


def documented_commands() -> list[Command]:
    """Every fenced ``distill`` command of :data:`DOCUMENTS`, in order."""
    return [command for path in DOCUMENTS for _, lines in fenced_blocks(path)
            for command in block_commands(path, lines)]


def whole_config_examples() -> list[tuple[str, dict]]:
    """``(where, mapping)`` of every fenced YAML block that is a whole run config (has ``name``)."""
    examples = []
    for path in DOCUMENTS:
        for lang, lines in fenced_blocks(path):
            raw = yaml.safe_load("\n".join(lines)) if lang == "yaml" else None
            if isinstance(raw, dict) and "name" in raw:
                examples.append((f"{path.name}: {raw['name']}", raw))
    return examples


COMMANDS = documented_commands()


def load_documented(args) -> None:
    """Load and validate the config of a parsed config command with its overrides (each grid
    point of a sweep). Raises ConfigError as ``distill`` would before doing any work."""
    if args.command == "sweep":
        grid = parse_grid(args.grid)
        for point in itertools.product(*grid.values()):
            load_config(args.config, [*args.overrides, *(f"{key}={value}" for key, value in zip(grid, point))])
    else:
        load_config(args.config, args.overrides)


@pytest.mark.parametrize("command", COMMANDS, ids=[command.where for command in COMMANDS])
def test_documented_command_parses_and_its_config_validates(command, monkeypatch):
    monkeypatch.chdir(ROOT)  # the documents' commands run from the repository root
    try:
        args = build_parser().parse_args(command.argv)
    except SystemExit as exc:
        pytest.fail(f"{command.where}: distill's parser refuses it (exit {exc.code})")
    if args.command == "teacher" and args.action == "install":
        assert args.name in CATALOG, f"{command.where}: {args.name} is not in teachers.catalog.CATALOG"
    if args.command not in CONFIG_COMMANDS:
        return
    if args.config in SKIPPED:  # parsed above; only its config is left unchecked
        pytest.skip(f"{args.config}: {SKIPPED[args.config]}")
    assert args.config in preset_names() or (ROOT / args.config).is_file(), (
        f"{command.where}: {args.config} is neither a preset nor a file of the repository; fix the command or "
        f"add it to SKIPPED with the reason")
    if command.error is None:
        load_documented(args)
        return
    with pytest.raises(ConfigError) as caught:
        load_documented(args)
    assert " ".join(str(caught.value).split()) == command.error, f"{command.where}: the documented error is stale"


def test_the_documents_hold_the_commands_this_test_relies_on():
    """The extraction finds the README's main command and the documented failing session, and
    every skipped config is still named by some command (the skip list stays honest)."""
    lines = {command.where for command in COMMANDS}
    assert "README.md: distill run sst2-quick" in lines
    assert any(command.error and "did you mean train.loss.temperature?" in command.error for command in COMMANDS)
    named = {word for command in COMMANDS for word in command.argv}
    assert set(SKIPPED) <= named, f"SKIPPED names configs no command uses any more: {set(SKIPPED) - named}"


@pytest.mark.parametrize("where,raw", whole_config_examples(), ids=[where for where, _ in whole_config_examples()])
def test_whole_config_examples_validate(where, raw):
    cfg = validate_config(raw, where)
    assert cfg.name == raw["name"]


def test_extraction_reads_sessions_joined_commands_and_indented_blocks(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("text `distill run inline` is not fenced\n\n"
                   "- a list item:\n\n"
                   "  ```bash\n"
                   "  pip install x && distill run sst2-quick --set train.epochs=1\n"
                   "  ```\n\n"
                   "```\n"
                   "$ distill validate sst2 --set a.b=1\n"
                   "distill: error: preset 'sst2': a is\n"
                   "  not a field\n"
                   "$ distill status run1 --address http://h:8265\n"
                   "distill-run1-1  SUCCEEDED\n"
                   "```\n", encoding="utf-8")
    found = [command for _, lines in fenced_blocks(doc) for command in block_commands(doc, lines)]
    assert [(command.argv, command.error) for command in found] == [
        (["run", "sst2-quick", "--set", "train.epochs=1"], None),
        (["validate", "sst2", "--set", "a.b=1"], "preset 'sst2': a is not a field"),
        (["status", "run1", "--address", "http://h:8265"], None)]


LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces to ``-``."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")}


@pytest.mark.parametrize("path", DOCUMENTS, ids=[path.name for path in DOCUMENTS])
def test_relative_links_and_images_resolve(path):
    broken = []
    for link in LINK.findall(path.read_text(encoding="utf-8")):
        if link.startswith(("http://", "https://")):
            continue
        target, _, anchor = link.partition("#")
        file = (path.parent / target) if target else path
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in heading_anchors(file)):
            broken.append(link)
    assert not broken, f"{path.name}: links to nothing: {broken}"
