"""What ``distill presets`` and ``distill show`` print: each preset's one-line description, and a
config resolved to one self-contained YAML file (bases merged, every default written out) that a
user can copy, edit and run as it is.
"""

from __future__ import annotations

import re
import textwrap
from importlib import resources

import yaml

from pipeline.config.loading import PRESET_PACKAGE, preset_names
from pipeline.config.sections import MultiTaskRunConfig, RunConfig

DESCRIPTION_WIDTH = 100
"""Characters of a preset's description at most (a longer first sentence is cut at a word, `` ...``)."""

SENTENCE_END = re.compile(r"(?<!\bal)(?<!e\.g)(?<!i\.e)\.(?=\s+[A-Z]|$)")
"""A full stop that ends a sentence: before a capital or the end, not that of "et al.", "e.g.", "i.e."."""


def preset_description(name: str) -> str:
    """A shipped preset's one-line description (:func:`leading_sentence` of its YAML file).

    Raises:
        FileNotFoundError: ``name`` is not a shipped preset (:func:`preset_names`).
    """
    return leading_sentence(resources.files(PRESET_PACKAGE).joinpath(f"{name}.yaml").read_text(encoding="utf-8"))


def leading_sentence(yaml_text: str) -> str:
    """The first sentence of the comment block that opens a YAML file, on one line, shortened to
    :data:`DESCRIPTION_WIDTH` characters; ``""`` when the file opens with no comment."""
    comment = []
    for line in yaml_text.splitlines():
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    block = " ".join(comment).strip()
    end = SENTENCE_END.search(block)
    sentence = block[:end.start()] if end else block
    return textwrap.shorten(sentence, DESCRIPTION_WIDTH, placeholder=" ...") if sentence else ""


def preset_table() -> str:
    """``distill presets``: one line per shipped preset, its name then its :func:`preset_description`."""
    names = preset_names()
    width = max(map(len, names))
    return "\n".join(f"{name:<{width}}  {preset_description(name)}".rstrip() for name in names)


def resolved_yaml(cfg: RunConfig | MultiTaskRunConfig, origin: str = "") -> str:
    """``cfg`` as one YAML config file: every field with its value, defaults included, in the
    order of the config types; saved to a file, it loads (:func:`pipeline.config.loading.load_config`)
    to a config equal to ``cfg``.

    Settings that follow others when left out are written with the value they took
    (``train.student.max_length``, ``prune.models``); ``data.text_column`` is left out when
    ``data.text_columns`` is given, since a config may name only one of them. Values are written
    as they are, secrets included (the run folder's ``config.yaml`` is the redacted copy).

    Args:
        cfg: a validated config.
        origin: what it was resolved from (a preset name, a file, with the overrides), for a
            comment line at the top; ``""`` for none.
    """
    raw = cfg.model_dump(mode="json")
    data = raw.get("data")
    if data is not None and data.get("text_columns") is not None:
        data.pop("text_column")
    header = f"# {origin}, resolved: bases merged, defaults written out\n" if origin else ""
    return header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
