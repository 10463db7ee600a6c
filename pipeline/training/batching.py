"""Streaming and sampling of the training rows: shuffled, length-grouped batches and the
interleaving of several tasks' streams.

The rows are streamed: Ray Data reads the Parquet shards in a shuffled file order, block by
block, splits them across the workers and each worker shuffles within a buffer of
:data:`LOCAL_SHUFFLE_ROWS` rows, so memory stays bounded whatever the transfer set's size.
"""

from __future__ import annotations

import numpy as np
import ray

from core.schema import TEXT, TEXT_PAIR, TOKENS, TaskKind

LOCAL_SHUFFLE_ROWS = 8192
"""Rows in each worker's shuffle buffer, re-seeded every epoch, on top of a shuffled file order."""

LENGTH_GROUP_BATCHES = 50
"""Batches per length group (see :func:`length_grouped`), as in transformers' ``group_by_length``."""


def read_shards(files: list[str], columns: list[str], shuffle: "ray.data.FileShuffleConfig | None" = None):
    """A Ray Data dataset that streams ``columns`` of the Parquet ``files`` (absolute paths), in a
    file order shuffled anew each epoch when ``shuffle`` is given.

    It is read through Ray Data's first Parquet datasource: the default one (DataSourceV2) lists
    the files on a pool of 32 ``FooterReader`` actors, started again for every read, that is
    every epoch of every split, 64 Python processes an epoch on a local 2-core Ray; this one
    reads the footers inside its read tasks. The setting is restored after the call.

    Returns:
        A ``ray.data.Dataset``, read when iterated.

    Raises:
        FileNotFoundError: a file is missing (the footers are listed at the call).
    """
    context = ray.data.DataContext.get_current()
    datasource_v2, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        return ray.data.read_parquet(files, columns=columns, shuffle=shuffle)
    finally:
        context.use_datasource_v2 = datasource_v2


def interleave(streams: list, steps: list[int], rng: np.random.Generator):
    """Merge per-task batch streams into one: each next batch comes from a task drawn with
    probability proportional to its expected batches left (``steps``, at least 1 while the
    stream lasts), so every task is spread over the whole epoch (the task sampling of MT-DNN,
    Liu et al. 2019).

    Args:
        streams: one iterator of batches per task.
        steps: the expected number of batches of each stream.
        rng: draws the task order.

    Yields:
        every batch of every stream, once.
    """
    live = dict(enumerate(streams))
    left = dict(enumerate(steps))
    while live:
        names = list(live)
        weights = np.array([max(left[i], 1) for i in names], dtype=np.float64)
        pick = names[rng.choice(len(names), p=weights / weights.sum())]
        try:
            batch = next(live[pick])
        except StopIteration:
            del live[pick]
            continue
        left[pick] -= 1
        yield batch


def shuffled_batches(shard, batch_size: int, seed: int, kind: TaskKind):
    """One epoch of a worker's training rows as numpy batches: shuffled within a buffer of
    :data:`LOCAL_SHUFFLE_ROWS` rows (on top of the dataset's shuffled file order), then cut
    into batches of similar length (:func:`length_grouped`) in a random order.

    Args:
        shard: a Ray Data dataset or a worker's ``DataIterator``.
        batch_size: rows per batch.
        seed: seeds the shuffle buffer and the batch order (vary it per epoch and rank).
        kind: the task's kind (what a row's length is).

    Yields:
        ``{column: np.ndarray [<= batch_size]}``.
    """
    groups = shard.iter_batches(batch_size=batch_size * LENGTH_GROUP_BATCHES,
                                local_shuffle_buffer_size=LOCAL_SHUFFLE_ROWS, local_shuffle_seed=seed)
    return length_grouped(groups, batch_size, np.random.default_rng(seed), kind)


def length_grouped(groups, batch_size: int, rng: np.random.Generator | None, kind: TaskKind):
    """Cut each group of rows (a Ray Data numpy batch of ``LENGTH_GROUP_BATCHES`` batches) into
    batches of rows of similar length, so that padding wastes little compute.

    Rows are sorted by :func:`row_lengths`, cut into batches of ``batch_size`` rows, and the
    batches are yielded in a random order drawn from ``rng`` (in order when None). The
    megabatch scheme of transformers' ``LengthGroupedSampler``; the rows are already shuffled
    across groups.

    Args:
        groups: iterable of ``{column: np.ndarray [N]}``.
        batch_size: rows per batch (the last batch of a group may be smaller).
        rng: shuffles the batch order within each group; None keeps them sorted (dev).
        kind: the task's kind.

    Yields:
        ``{column: np.ndarray [<= batch_size]}``.
    """
    for group in groups:
        order = np.argsort(row_lengths(group, kind), kind="stable")
        starts = np.arange(0, len(order), batch_size)
        if rng is not None:
            rng.shuffle(starts)
        for start in starts:
            rows = order[start:start + batch_size]
            yield {column: values[rows] for column, values in group.items()}


def row_lengths(group: dict[str, np.ndarray], kind: TaskKind) -> np.ndarray:
    """Length of each row's input, int64 [N]: words of ``tokens`` for token tasks, else
    characters of ``text`` (+ ``text_pair`` for pairs)."""
    if kind is TaskKind.TOKEN:
        return np.fromiter((len(words) for words in group[TOKENS]), dtype=np.int64, count=len(group[TOKENS]))
    lengths = np.char.str_len(group[TEXT].astype(str))
    if kind is TaskKind.PAIR:
        lengths = lengths + np.char.str_len(group[TEXT_PAIR].astype(str))
    return lengths
