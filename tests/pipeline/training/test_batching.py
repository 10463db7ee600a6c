"""Streaming and sampling of training rows: length-grouped batches, row lengths per task kind,
and the interleaving of several tasks' streams."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray._private.state

from core.schema import TaskKind
from pipeline.training.batching import interleave, length_grouped, read_shards, row_lengths


def test_length_grouped_batches_hold_rows_of_similar_length_once_each():
    texts = np.array(["x" * n for n in [9, 1, 7, 3, 8, 2, 6, 4, 5, 10]], dtype=object)
    group = {"text": texts, "label": np.arange(10)}
    batches = list(length_grouped([group], batch_size=3, rng=np.random.default_rng(0), kind=TaskKind.SENTENCE))
    assert [len(b["label"]) for b in sorted(batches, key=lambda b: len(b["text"][0]))] == [3, 3, 3, 1]
    assert sorted(label for b in batches for label in b["label"].tolist()) == list(range(10))
    for batch in batches:  # each row keeps its own label, and a batch spans neighbouring lengths
        assert all(len(texts[label]) == len(text) for text, label in zip(batch["text"], batch["label"]))
    spans = sorted((min(map(len, b["text"])), max(map(len, b["text"]))) for b in batches)
    assert spans == [(1, 3), (4, 6), (7, 9), (10, 10)]
    in_order = list(length_grouped([group], batch_size=3, rng=None, kind=TaskKind.SENTENCE))
    assert [len(b["text"][0]) for b in in_order] == [1, 4, 7, 10]


def test_row_lengths_follow_the_task_kind():
    words = {"tokens": np.array([["a"] * 3, ["a"], ["a"] * 2], dtype=object)}
    assert row_lengths(words, TaskKind.TOKEN).tolist() == [3, 1, 2]
    pairs = {"text": np.array(["ab", "c"], dtype=object), "text_pair": np.array(["d", "efgh"], dtype=object)}
    assert row_lengths(pairs, TaskKind.PAIR).tolist() == [3, 5]
    assert row_lengths(pairs, TaskKind.SENTENCE).tolist() == [2, 1]  # the kind decides, not the columns


def test_interleave_yields_every_batch_once_spread_over_the_epoch():
    streams = [iter([("a", i) for i in range(3)]), iter([("b", i) for i in range(9)])]
    merged = list(interleave(streams, [3, 9], np.random.default_rng(0)))
    assert sorted(merged) == [("a", i) for i in range(3)] + [("b", i) for i in range(9)]
    assert [i for task, i in merged if task == "a"] == [0, 1, 2]  # each task's own order is kept
    first_a = next(k for k, (task, _) in enumerate(merged) if task == "a")
    assert first_a < 6  # the small task is not left to the end
    single = iter([1, 2])
    assert list(interleave([single], [2], np.random.default_rng(0))) == [1, 2]



def test_shards_are_read_epoch_after_epoch_without_a_footer_reader_pool(tmp_path, ray_local):
    files = []
    for i in range(3):
        files.append(str(tmp_path / f"shard-{i}.parquet"))
        pq.write_table(pa.table({"id": range(10 * i, 10 * i + 10), "text": ["x"] * 10}), files[-1])
    context = ray.data.DataContext.get_current()
    dataset = read_shards(files, columns=["id"], shuffle=ray.data.FileShuffleConfig(seed=0))
    assert context.use_datasource_v2  # restored after the call
    epochs = [[row["id"] for row in dataset.iter_rows()] for _ in range(2)]
    assert all(sorted(ids) == list(range(30)) for ids in epochs)
    assert set(dataset.columns()) == {"id"}
    actors = {actor["ActorClassName"] for actor in ray._private.state.actors().values()}
    assert "FooterReader" not in actors  # DataSourceV2 would have started 32 of them per read
