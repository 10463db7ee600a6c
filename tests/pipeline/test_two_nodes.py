"""The label and train stages on a two-node Ray cluster (ray.cluster_utils.Cluster: a head with
2 CPUs and a worker node with 3, one machine), and a worker node lost during labeling.

The sizes force spreading: a label actor of ``cpus_per_actor: 2`` fits once per node, and two
train workers reserve 2 CPUs each (:func:`pipeline.stages.train.worker_cpus` of 5 CPUs), which no node
holds twice.
"""

import threading
import time

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster
from test_label import direct_logits, stored_logits
from test_label_actor_kill import ROWS, SHARD_ROWS, check_every_row_once, label_run
from test_train import build_run

from core.artifacts import read_json
from pipeline.stages import label, train

pytestmark = pytest.mark.serial  # deadlines and killed processes: CI runs it alone (.ci/run)


@pytest.fixture(scope="module")
def cluster():
    """A head (2 CPUs) and a worker node (3 CPUs) for the module; the session's local Ray is
    shut down meanwhile and started again afterwards."""
    was_local = ray.is_initialized()
    ray.shutdown()
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    nodes.add_node(num_cpus=3)
    ray.init(address=nodes.address, log_to_driver=False)
    nodes.wait_for_nodes()
    yield nodes
    ray.shutdown()
    nodes.shutdown()
    if was_local:  # as tests/conftest.py's ray_local started it
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)


def node_ids(cluster):
    return {cluster.head_node.node_id, *(node.node_id for node in cluster.worker_nodes)}


@pytest.mark.slow  # about 60 s: a cluster, a labeling and a two-worker training
def test_label_actors_and_train_workers_run_on_both_nodes(tmp_path, tiny_teacher_dir, cluster):
    cfg, run = label_run(tmp_path / "label", tiny_teacher_dir, num_actors=2, cpus_per_actor=2)
    assert label.run(cfg, run)["rows"] == ROWS
    table = check_every_row_once(run)
    assert {e["node_id"] for e in read_json(run.shard_index)["shards"]} == node_ids(cluster)
    # equal to a one-node run's soft labels, which equal a plain forward (tests/pipeline/test_label.py)
    np.testing.assert_allclose(stored_logits(table), direct_logits(run.teacher_dir, table.column("text").to_pylist()),
                               atol=1e-5)

    cfg, run_dir = build_run(tmp_path / "train", num_workers=2, ce_only_baseline=False)
    summary = train.run(cfg, run_dir)["kd"]
    (attempt,) = summary["attempts"]
    assert {worker["node_id"] for worker in attempt["workers"]} == node_ids(cluster)  # rank 0 on one node, rank 1 on the other
    assert summary["optimizer_steps"] == 2 * 6  # 2 epochs of ceil(384 rows / 2 workers / 32)
    # as on one node (tests/pipeline/test_train.py): the trivially learnable task is learned
    assert summary["best_dev_score"] > 0.9
    assert summary["history"][-1]["loss_kd"] < summary["history"][0]["loss_kd"]


@pytest.mark.slow  # about 40 s: a labeling, its worker node removed and replaced
def test_worker_node_removed_during_labeling_loses_and_repeats_no_row(tmp_path, tiny_teacher_dir, cluster):
    cfg, run = label_run(tmp_path, tiny_teacher_dir, num_actors=2, cpus_per_actor=2)
    (lost,) = cluster.worker_nodes
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(label.run(cfg, run)))
    thread.start()
    deadline = time.monotonic() + 240
    while not run.shard_index.exists() or lost.node_id not in {
            e["node_id"] for e in read_json(run.shard_index)["shards"]}:
        assert thread.is_alive() and time.monotonic() < deadline, "labeling ended or stalled before the removal"
        time.sleep(0.02)
    cluster.remove_node(lost)  # its actor dies mid-shard
    removed_with = len(read_json(run.shard_index)["shards"])
    replacement = cluster.add_node(num_cpus=3)  # as an autoscaler replaces a lost node
    thread.join(timeout=600)
    assert not thread.is_alive() and outcome["rows"] == ROWS

    assert removed_with < ROWS // SHARD_ROWS, "the node was removed after the last shard"
    check_every_row_once(run)
    nodes = {e["node_id"] for e in read_json(run.shard_index)["shards"]}
    # the removed node had labeled; its lost shard went to the surviving actor or to the restarted one on the
    # replacement node, whichever was free first (on an idle machine the survivor finished all 12 first)
    assert lost.node_id in nodes and nodes <= {cluster.head_node.node_id, lost.node_id, replacement.node_id}
    print(f"node removed with {removed_with} of {ROWS // SHARD_ROWS} shards done; shards from {len(nodes)} nodes")
