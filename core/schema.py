"""The columns of the tables that flow between stages, defined once.

``data/{train,dev,[test,]transfer}.parquet`` (stage data) and ``label/shard-*.parquet`` (stage
label, read back by stage train) share these names. Which columns a table holds depends on the
task's :class:`TaskKind`:

    column          type                      kinds          holds
    id              int64                     all            row id within the split
    text            string                    sentence/pair  the (first) sentence
    text_pair       string                    pair           the second sentence
    label           int64                     sentence/pair  hard class index, -1 (``NO_LABEL``) when none
    tokens          list<string>              token          the sentence's W words
    tags            list<int64>               token          hard tag per word, [] when none

and in the label stage's shards, after those (as ``label.emit`` configures):

    logits          list<float32>[C]          sentence/pair  teacher logits (soft labels)
                    list<float32>[W * C]      token          per word, row-major [W, C]; zeros without a signal
    topk_values     list<float32>[k]          sentence/pair  instead of logits: the k largest ...
    topk_indices    list<int32>[k]            sentence/pair  ... and their class ids, largest first
    num_words       int32                     token          W
    word_mask       list<bool>[W]             token          False for words cut by teacher.max_length
    length          int32                     sentence/pair  real tokens T of the row (with per-token signals)
    hidden_{l}      list<float16>[T * D]      sentence/pair  layer l's hidden states, row-major [T, D]
    attention_{l}   list<float16>[H * T * T]  sentence/pair  layer l's attention maps, row-major [H, T, T]

Per-token signals are cut to the row's T real tokens (no padding on disk) and flattened
row-major; the train stage pads them per batch to [B, T_max, D] and [B, H, T_max, T_max].
"""

from __future__ import annotations

from enum import Enum

ID = "id"
TEXT = "text"
TEXT_PAIR = "text_pair"
LABEL = "label"
TOKENS = "tokens"
TAGS = "tags"
LOGITS = "logits"
TOPK_VALUES = "topk_values"
TOPK_INDICES = "topk_indices"
NUM_WORDS = "num_words"
WORD_MASK = "word_mask"
LENGTH = "length"
HIDDEN_PREFIX = "hidden_"
ATTENTION_PREFIX = "attention_"

NO_LABEL = -1
"""``label`` (or a tag) of a row (word) without a hard label."""


def hidden_column(layer: int) -> str:
    """Column of the teacher's layer-``layer`` hidden states: ``hidden_{layer}``."""
    return f"{HIDDEN_PREFIX}{layer}"


def attention_column(layer: int) -> str:
    """Column of the teacher's layer-``layer`` attention maps: ``attention_{layer}``."""
    return f"{ATTENTION_PREFIX}{layer}"


def is_per_token_signal(column: str) -> bool:
    """Whether ``column`` holds a per-token signal (``hidden_{l}`` or ``attention_{l}``)."""
    return column.startswith((HIDDEN_PREFIX, ATTENTION_PREFIX))


class TaskKind(str, Enum):
    """What a row of a task is: one sentence, a sentence pair, or a sentence of tagged words.

    Decided once from the config (:func:`pipeline.config.sections.task_kind`) and passed down, so that no
    code sniffs a table's columns to find out.
    """

    SENTENCE = "sentence"
    PAIR = "pair"
    TOKEN = "token"

    @property
    def text_columns(self) -> list[str]:
        """The input columns: ``[text]``, ``[text, text_pair]`` or ``[tokens]``."""
        return {TaskKind.SENTENCE: [TEXT], TaskKind.PAIR: [TEXT, TEXT_PAIR], TaskKind.TOKEN: [TOKENS]}[self]

    @property
    def label_column(self) -> str:
        """The hard-label column: ``tags`` for token tasks, else ``label``."""
        return TAGS if self is TaskKind.TOKEN else LABEL

    @property
    def base_columns(self) -> list[str]:
        """The columns of every stored split: ``id``, the inputs and the hard labels."""
        return [ID, *self.text_columns, self.label_column]


TASK_KINDS: tuple[str, ...] = tuple(kind.value for kind in TaskKind)
"""The kinds' names, for messages and multi-task heads."""
