"""report.md and metrics.json from stage manifests."""

from pipeline import report
from core.artifacts import read_json
from pipeline.artifacts import RunDir


def model(acc, params, p50):
    return {"dev_accuracy": acc, "parameters": params, "size_mb": params * 4 / 2**20,
            "latency": {"p50_ms": p50, "p99_ms": p50 * 2, "mean_ms": p50}}


def test_report_has_every_model_and_stage(tmp_path):
    run = RunDir(tmp_path)
    run.publish("data", "a", {"train": {"rows": 10}, "transfer": {"rows": 30, "label_counts": {"-1": 20}}}, 1.0)
    run.publish("evaluate", "b", {"dev_rows": 5, "hardware": {"cpu": "cpu", "torch_threads": 2, "torch": "2"},
                                  "models": {"teacher": model(0.9, 1000, 8.0), "kd": model(0.8, 100, 2.0)}}, 2.0)
    metrics = report.write(run, "demo", ["data", "evaluate"])
    text = run.report_file.read_text()
    assert "| teacher (fine-tuned) | 0.9000 | 1,000 |" in text
    assert "| student, KD | 0.8000 | 100 |" in text and "| 4.0x |" in text
    assert "transfer set: 30 rows (20 without a hard label)" in text
    assert "| evaluate | 2.0 |" in text
    assert read_json(run.metrics_file) == metrics


def test_report_of_a_token_task_has_every_score_column(tmp_path):
    run = RunDir(tmp_path)
    run.publish("data", "a", {"train": {"rows": 10}, "transfer": {"rows": 30, "unlabeled_rows": 20,
                                                                  "label_counts": {"0": 200, "1": 40}}}, 1.0)
    scores = {"dev_entity_f1": 0.91, "dev_entity_precision": 0.9, "dev_entity_recall": 0.92, "test_entity_f1": 0.88}
    run.publish("evaluate", "b", {"dev_rows": 5, "test_rows": 6, "score_keys": list(scores),
                                  "hardware": {"cpu": "cpu", "torch_threads": 2, "torch": "2"},
                                  "models": {"teacher": {**model(0, 1000, 8.0), **scores}}}, 2.0)
    text = report.write(run, "ner", ["data", "evaluate"]) and run.report_file.read_text()
    assert ("| model | dev entity F1 | dev entity precision | dev entity recall | test entity F1 | parameters |"
            in text)
    assert "| teacher (fine-tuned) | 0.9100 | 0.9000 | 0.9200 | 0.8800 | 1,000 |" in text
    assert "Dev rows: 5; test rows: 6." in text and "(20 without a hard label)" in text
