"""Typed configuration of the ``data`` stage: the splits, augmentation and the task's data settings.

Composed into :class:`pipeline.config.sections.RunConfig` (and re-exported there).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from core.config import COUNTED_WHEN_SET, Section

DATA_DIR_ENV = "DISTILL_DATA_DIR"
"""Environment variable naming the folder that relative data paths resolve against."""

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"
"""Fallback data folder: ``shared/data`` beside the repository (``../shared/data`` from its root),
whatever the working directory."""


class SplitConfig(Section):
    """One input table: a local TSV/CSV/JSONL/JSON/Parquet file, a hub dataset split, or a local
    file with a hub split to fall back on when the file is missing (:mod:`pipeline.textdata.hub`).

    Relative ``path`` values resolve against ``data.root``. ``limit`` keeps the first rows
    after skipping ``skip`` rows, so presets can take slices of one file.
    """

    path: str | None = None
    hub: str | None = Field(default=None, description="hub dataset name (e.g. stanfordnlp/sst2): read when path "
                                                      "is unset or its file is missing, online or from the cache")
    hub_subset: str | None = None
    hub_split: str = "train"
    skip: int = Field(default=0, ge=0)
    limit: int | None = Field(default=None, gt=0)

    def fingerprint_view(self) -> dict[str, Any]:
        """Beside a local ``path``, the hub fields are a fallback source of the same split: they
        count at their defaults in the data stage's fingerprint (presets named hub splits after
        runs existed, whose fingerprints hold the defaults)."""
        view = super().fingerprint_view()
        if self.path is not None:
            view |= {name: type(self).model_fields[name].default for name in ("hub", "hub_subset", "hub_split")}
        return view

    @model_validator(mode="after")
    def _one_source(self) -> "SplitConfig":
        if self.path is None and self.hub is None:
            raise ValueError("give 'path' (a local file), 'hub' (a hub dataset name), or both (hub read when the "
                             "file is missing)")
        return self


class AugmentConfig(Section):
    """Transfer-set augmentation of Tang et al. (2019): masking, POS-guided word replacement and
    n-gram sampling, ``copies`` candidates per labeled sentence (their defaults: 0.1, 0.1, 0.25).
    For token tasks every operation keeps words whole, and the teacher tags the candidates' words."""

    copies: int = Field(default=5, gt=0, description="candidates per labeled sentence before deduplication")
    p_mask: float = Field(default=0.1, ge=0, le=1)
    p_pos: float = Field(default=0.1, ge=0, le=1)
    p_ngram: float = Field(default=0.25, ge=0, le=1)
    max_ngram: int = Field(default=5, gt=0)
    mask_token: str = "[MASK]"
    pos_lexicon: str | None = Field(
        default=None, description="None: the packaged lexicon (CoNLL-2003 train, Reuters; pipeline.textdata.lexicon); "
                                  "else a CoNLL-format file (TOKEN POS ...) or a word/tag/count .tsv(.gz), relative "
                                  "to data.root")
    num_actors: int = Field(default=2, gt=0)


class DataConfig(Section):
    """Stage ``data``: the labeled train split, the dev split, an optional test split and the
    unlabeled transfer set.

    The transfer set that the teacher labels is the labeled train split (hard labels kept)
    plus the rows of ``unlabeled`` (hard labels dropped), as in Tang et al. (2019). With
    ``text_pair_column`` every row is a sentence pair (text, text_pair).

    ``task: token`` is word tagging (NER): every split is a file of one word per line, ``TOKEN TAG``
    or CoNLL-2003's columns (:mod:`pipeline.textdata.conll`), ``labels`` is the tag set (IOB2, e.g.
    ``CONLL2003_TAGS``), ``tag_column`` the field of the tag, and the column settings are not used.

    ``metric`` is the task's score (:func:`pipeline.evaluation.scoring.score`): it picks the
    students' best epoch and heads the evaluate report, accuracy beside it.
    """

    root: Path | None = Field(
        default=None, description=f"folder that relative split paths resolve against; a relative root resolves "
                                  f"against the folder of the YAML file that sets it (the working directory for "
                                  f"--set and dicts); unset: ${DATA_DIR_ENV}, else ../shared/data beside the "
                                  f"repository")
    task: Literal["sequence", "token"] = Field(
        default="sequence", description="sequence: one label per sentence (or pair); token: one tag per word, "
                                        "CoNLL-format splits")
    train: SplitConfig
    dev: SplitConfig
    test: SplitConfig | None = Field(default=None, description="evaluated by the evaluate stage when given")
    unlabeled: SplitConfig | None = None
    columns: list[str] | None = Field(
        default=None, min_length=1, description="names of the columns of TSV/CSV files without a header line "
                                                "(their first line is data); files with a header leave it out")
    text_column: str = "sentence"
    text_columns: list[str] | None = Field(
        default=None, min_length=1, description="instead of text_column: columns joined into one input with "
                                                "text_separator (e.g. [title, description])")
    text_separator: str = " "
    text_pair_column: str | None = Field(
        default=None, description="second sentence of a sentence-pair task (MRPC, RTE, MNLI); stored as text_pair")
    label_column: str = "label"
    labels: list[int | str] = Field(min_length=2, description="the label set, in class-index order")
    label_values: list[int | str] | None = Field(
        default=None, description="what stands for each label in the files, in labels order (e.g. 1..4 for "
                                  "[World, Sports, Business, Sci/Tech]); a file value may be the label or this")
    label_names: list[str] | None = None
    augment: AugmentConfig | None = Field(default=None, description="grow the transfer set from the labeled split")
    tag_column: int = Field(
        default=-1, json_schema_extra=COUNTED_WHEN_SET,
        description="token tasks: the field of a line that holds the tag, 0-based, negative from the end (-1: the "
                    "last, as in TOKEN TAG and CoNLL-2003's TOKEN POS CHUNK TAG)")
    metric: Literal["accuracy", "f1", "macro_f1", "matthews", "entity_f1"] | None = Field(
        default=None, json_schema_extra=COUNTED_WHEN_SET,
        description="the task's score, which picks the best epoch and heads the report: accuracy; "
                                  "f1 of the positive class (labels[1], two labels only); macro_f1; matthews "
                                  "(correlation); entity_f1 (token tasks, their only one). None: accuracy, or "
                                  "entity_f1 for token tasks")

    @model_validator(mode="after")
    def _names_match(self) -> "DataConfig":
        if len(set(map(str, self.labels))) != len(self.labels):
            raise ValueError(f"labels must be distinct, got {self.labels}")
        if self.label_names is not None and len(self.label_names) != len(self.labels):
            raise ValueError(f"label_names has {len(self.label_names)} entries but labels has {len(self.labels)}")
        if self.text_columns is not None and "text_column" in self.model_fields_set:
            raise ValueError("give text_column (one input column) or text_columns (joined), not both")
        if self.label_values is not None:
            if len(self.label_values) != len(self.labels):
                raise ValueError(f"label_values has {len(self.label_values)} entries but labels has {len(self.labels)}")
            clash = [(v, self.labels[i]) for i, v in enumerate(self.label_values) if str(v) in map(str, self.labels)
                     and str(v) != str(self.labels[i])]
            if clash or len(set(map(str, self.label_values))) != len(self.label_values):
                raise ValueError(f"label_values must be distinct and not name another label, got {self.label_values} "
                                 f"for labels {self.labels}")
        if self.task == "token":
            bad = [tag for tag in self.labels if not (tag == "O" or str(tag).startswith(("B-", "I-")))]
            if bad:
                raise ValueError(f"a token task's labels are IOB2 tags ('O', 'B-TYPE', 'I-TYPE'); got {bad}")
        return self

    @property
    def scored_metric(self) -> str:
        """The task's metric: ``metric``, or when left out ``accuracy`` (``entity_f1`` for token tasks)."""
        return self.metric or ("entity_f1" if self.task == "token" else "accuracy")

    def resolved_root(self) -> Path:
        """The folder relative paths resolve against: ``root``, ``$DISTILL_DATA_DIR`` or :data:`DEFAULT_DATA_DIR`."""
        if self.root is not None:
            return Path(self.root)
        return Path(os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR))

    def resolve(self, split: SplitConfig) -> Path | None:
        """Path of a local split, or None for a hub split."""
        return None if split.path is None else self.resolve_path(split.path)

    def resolve_path(self, path: str | Path) -> Path:
        """``path`` itself when absolute, else under :meth:`resolved_root`."""
        path = Path(path)
        return path if path.is_absolute() else self.resolved_root() / path
