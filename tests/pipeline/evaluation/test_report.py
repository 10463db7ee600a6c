"""report.md and metrics.json from stage manifests."""

from pipeline.evaluation import report
from core.artifacts import read_json
from pipeline.artifacts import RunDir


def model(acc, params, p50):
    return {"dev_accuracy": acc, "parameters": params, "size_mb": params * 4 / 2**20,
            "latency": {"p50_ms": p50, "p99_ms": p50 * 2, "mean_ms": p50}}


def test_report_has_every_model_and_stage(tmp_path):
    # manifests in the layout the stages write today (data: unlabeled_rows; evaluate: score_keys)
    run = RunDir(tmp_path)
    run.publish("data", "a", {"train": {"rows": 10, "unlabeled_rows": 0, "label_counts": {"0": 4, "1": 6}},
                              "dev": {"rows": 5, "unlabeled_rows": 0, "label_counts": {"0": 2, "1": 3}},
                              "transfer": {"rows": 30, "unlabeled_rows": 20,
                                           "label_counts": {"-1": 20, "0": 4, "1": 6}}}, 1.0)
    run.publish("finetune", "b", {"steps": 3, "final_loss": 0.5}, 4.0)
    run.publish("evaluate", "c", {"dev_rows": 5, "score_keys": ["dev_accuracy"],
                                  "hardware": {"cpu": "cpu", "torch_threads": 2, "torch": "2"},
                                  "models": {"teacher": model(0.9, 1000, 8.0), "kd": model(0.8, 100, 2.0),
                                             "ce_only": model(0.7, 100, 4.0)}}, 2.0)
    metrics = report.write(run, "demo", ["data", "finetune", "evaluate"])
    lines = run.report_file.read_text().splitlines()
    assert lines[0] == "# Distillation report: demo"
    assert "| model | dev accuracy | parameters | size (MB) | batch-1 p50 (ms) | p99 (ms) | speed-up vs teacher |" in lines
    assert "| teacher (fine-tuned) | 0.9000 | 1,000 | 0.0 | 8.00 | 16.00 | 1.0x |" in lines
    assert "| student, KD | 0.8000 | 100 | 0.0 | 2.00 | 4.00 | 4.0x |" in lines
    assert "| student, CE only | 0.7000 | 100 | 0.0 | 4.00 | 8.00 | 2.0x |" in lines
    assert "Labeled train rows: 10; transfer set: 30 rows (20 without a hard label)." in lines
    assert [line for line in lines if line.startswith("| data") or line.startswith("| finetune")
            or line.startswith("| evaluate")] == ["| data | 1.0 |", "| finetune | 4.0 |", "| evaluate | 2.0 |"]
    assert read_json(run.metrics_file) == metrics == {s: run.manifest(s) for s in ("data", "finetune", "evaluate")}


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


def test_report_of_several_tasks_has_a_row_per_task_and_score(tmp_path):
    run = RunDir(tmp_path)
    latency = {"p50_ms": 1.5, "p99_ms": 3.0, "mean_ms": 1.5}
    run.publish("train", "a", {"kd": {"best_dev_score": 0.9}}, 3.0)
    run.publish("evaluate", "b", {
        "tasks": {"sst": {"kind": "sentence", "kd": {"dev_accuracy": 0.85}, "ce_only": {"dev_accuracy": 0.5},
                          "score_keys": ["dev_accuracy"], "teacher": {"dev_accuracy": 0.9},
                          "baseline": {"rule": "majority class: 1", "dev_accuracy": 0.51},
                          "flags": {"ce_only": "at or below the trivial baseline"}},
                  "ner": {"kind": "token", "kd": {"dev_entity_f1": 0.7}, "score_keys": ["dev_entity_f1"],
                          "teacher": None}},
        "models": {"kd": {"parameters": 1234, "size_mb": 0.5, "latency": latency}},
        "latency_task": "sst", "hardware": {"cpu": "cpu", "torch_threads": 2, "torch": "2"}}, 2.0)
    report.write(run, "mt", ["train", "evaluate"])
    lines = run.report_file.read_text().splitlines()
    assert lines[0] == "# Multi-task distillation report: mt"
    assert "| task | score | teacher | student, KD | student, CE only | trivial baseline |" in lines
    assert ("| sst | dev accuracy | 0.9000 | 0.8500 | 0.5000 **[flagged: at or below the trivial baseline]** "
            "| 0.5100 |") in lines
    assert "| ner | dev entity f1 | - | 0.7000 | - | - |" in lines  # a manifest of before the baseline
    assert "Batch-1 latency on sst dev rows." in lines
    assert "| student, KD | 1,234 | 0.5 | 1.50 | 3.00 |" in lines
    assert lines[-2:] == ["| train | 3.0 |", "| evaluate | 2.0 |"]


def test_report_and_metrics_show_the_trivial_baseline_and_flag_a_student_below_it(tmp_path):
    run = RunDir(tmp_path)
    run.publish("data", "a", {"train": {"rows": 10}, "transfer": {"rows": 30, "unlabeled_rows": 0,
                                                                  "label_counts": {"0": 4, "1": 6}}}, 1.0)
    flag = "at or below the trivial baseline"
    run.publish("evaluate", "b", {"dev_rows": 5, "test_rows": 4, "score_keys": ["dev_accuracy", "test_accuracy"],
                                  "hardware": {"cpu": "cpu", "torch_threads": 2, "torch": "2"},
                                  "baseline": {"rule": "majority class: 1", "dev_accuracy": 0.6, "test_accuracy": 0.5},
                                  "models": {"teacher": {**model(0.9, 1000, 8.0), "test_accuracy": 0.85},
                                             "kd": {**model(0.6, 100, 2.0), "test_accuracy": 0.5, "flag": flag}}}, 2.0)
    report.write(run, "demo", ["data", "evaluate"])
    lines = run.report_file.read_text().splitlines()
    assert "| teacher (fine-tuned) | 0.9000 | 0.8500 | 1,000 | 0.0 | 8.00 | 16.00 | 1.0x |" in lines
    assert ("| student, KD **[flagged: at or below the trivial baseline]** | 0.6000 | 0.5000 | 100 | 0.0 | 2.00 | "
            "4.00 | 4.0x |") in lines
    assert "| trivial baseline (majority class: 1) | 0.6000 | 0.5000 | - | - | - | - | - |" in lines
    models = read_json(run.metrics_file)["evaluate"]["models"]
    assert models["kd"]["flag"] == flag and "flag" not in models["teacher"]


def variant(name, model, backend, acc, size_mb, p50):
    """A benchmark row (:mod:`pipeline.stages.benchmark`) measured at one thread."""
    return {"name": name, "model": model, "backend": backend, "precision": "fp32", "dev_accuracy": acc,
            "size_mb": size_mb, "speedup_vs_teacher_best": 1.0, "size_ratio_vs_teacher_best": 1.0,
            "threads": {"1": {"p50_ms": p50, "p99_ms": p50, "throughput_eps": 1.0, "peak_rss_mb": 1.0}}}


def test_report_opens_with_the_headline_and_its_html_holds_every_plot_inline(tmp_path):
    import base64
    import io
    from html.parser import HTMLParser

    from PIL import Image

    run = RunDir(tmp_path)
    colours = {"benchmark/pareto.png": "red", "prune/sensitivity-kd.png": "green", "train/curve.png": "blue"}
    for path, colour in {**colours, "wandb/media/x.png": "black"}.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 3), colour).save(tmp_path / path)
    run.publish("data", "a", {"train": {"rows": 10}, "transfer": {"rows": 30, "unlabeled_rows": 20,
                                                                  "label_counts": {"0": 4}}}, 1.0)
    run.publish("evaluate", "b", {"dev_rows": 5, "score_keys": ["dev_accuracy"],
                                  "hardware": {"cpu": "cpu", "torch_threads": 2, "torch": "2"},
                                  "models": {"teacher": model(0.9, 1000, 8.0), "kd": model(0.8, 100, 2.0),
                                             "ce_only": model(0.85, 100, 4.0)}}, 2.0)
    variants = [variant("teacher", "teacher", "pytorch", 0.9, 400.0, 100.0),
                variant("ce_only", "ce_only", "pytorch", 0.85, 60.0, 8.0),
                variant("ce_only/onnxruntime-int8-dynamic", "ce_only", "onnxruntime", 0.84, 15.0, 1.0),
                variant("kd/pytorch-int8-dynamic", "kd", "pytorch", 0.82, 50.0, 0.5),  # PyTorch: not shipped
                variant("teacher/onnxruntime-fp32", "teacher", "onnxruntime", 0.9, 410.0, 0.2)]  # not a student
    run.publish("benchmark", "c", {"score_key": "dev_accuracy", "variants": variants, "baseline": "teacher",
                                   "pareto": [v["name"] for v in variants[2:]], "pareto_png": "benchmark/pareto.png",
                                   "machine": {"cpu_model": "cpu", "physical_cores": 2, "logical_cores": 2,
                                               "cpu_flags": [], "threads": {"1": 1}, "versions": {}},
                                   "bundles": {"ce_only": "ship/ce_only"}}, 3.0)
    report.write(run, "demo", ["data", "evaluate", "benchmark"])
    lines = run.report_file.read_text().splitlines()
    assert lines[2:9] == ["## Headline", "", "| | model | dev accuracy | size (MB) | p50 (ms, benchmark, batch 1, one "
                          "thread) |", "|---|---|---:|---:|---:|", "| teacher | teacher | 0.9000 | 400.0 | 100.00 |",
                          "| best student | ce_only | 0.8500 | 60.0 | 8.00 |",
                          "| shipped student | ce_only/onnxruntime-int8-dynamic | 0.8400 | 15.0 | 1.00 |"]
    assert lines[10].startswith("Stage reports: [data](data/manifest.json) · [evaluate](evaluate/manifest.json) · "
                                "[benchmark](benchmark/manifest.json) · [model card: ce_only](ship/ce_only/README.md)")

    class Images(HTMLParser):
        sources, cells = [], []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.sources.append(dict(attrs)["src"])

        def handle_data(self, data):
            self.cells.append(data.strip())

    page = Images()
    page.feed(run.report_html.read_text())
    assert "ce_only/onnxruntime-int8-dynamic" in page.cells and "Headline" in page.cells
    assert len(page.sources) == len(colours)  # every plot of the run once; wandb/ is not the run's
    shown = set()
    for source in page.sources:
        prefix, data = source.split(",", 1)
        assert prefix == "data:image/png;base64"
        raw = base64.b64decode(data, validate=True)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        shown.add(Image.open(io.BytesIO(raw)).convert("RGB").getpixel((0, 0)))
    assert shown == {(255, 0, 0), (0, 128, 0), (0, 0, 255)}
