"""The model card of a bundle (:mod:`pipeline.evaluation.bundle`): ``README.md`` in the Hugging Face
model-card form (https://huggingface.co/docs/hub/model-cards): YAML front matter (``library_name``,
``pipeline_tag``, ``tags``, ``metrics`` and a ``model-index`` with the dev score of each artifact),
then the artifacts' dev score, batch-1 latency and size from the benchmark stage, the command
that made the run, and how to load the files in ExecuTorch, ONNX Runtime (Mobile) and LiteRT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.evaluation.bundle import AGREEMENT_TARGET

PIPELINE_TAGS = {"sequence": "text-classification", "token": "token-classification"}
"""Task of the run -> Hugging Face ``pipeline_tag``."""
RUNTIME_TAGS = {"onnxruntime": "onnx", "executorch": "executorch", "litert": "tflite"}


def front_matter(info: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The card's YAML metadata from a bundle's ``bundle.json`` content.

    Args:
        info: ``bundle.json``'s content (:func:`pipeline.evaluation.bundle.write_bundles`).
        dataset: the data set's name (the dev split's folder, e.g. ``sst2``).
    """
    metric = info["score_key"].removeprefix("dev_")
    artifacts = info["artifacts"]
    tags = ["distillation", "on-device", *dict.fromkeys(RUNTIME_TAGS[a["backend"]] for a in artifacts),
            *dict.fromkeys(a["precision"] for a in artifacts)]
    task = PIPELINE_TAGS[info["task"]]
    return {"library_name": "onnxruntime" if any(a["backend"] == "onnxruntime" for a in artifacts) else "executorch",
            "pipeline_tag": task, "tags": tags, "datasets": [dataset], "metrics": [metric],
            "model-index": [{"name": info["model"], "results": [
                {"task": {"type": task}, "dataset": {"name": dataset, "type": dataset, "split": "dev"},
                 "metrics": [{"type": metric, "value": a[info["score_key"]], "name": f"dev {metric} ({a['name']})"}
                             for a in artifacts if a["measured_as"] is None]}]}]}


def artifact_table(info: dict[str, Any]) -> str:
    """A Markdown table: artifact, runtime, precision, input, dev score, p50 (ms), size (MB), why it is here."""
    key = info["score_key"]
    lines = [f"| artifact | runtime | precision | input | {key} | batch-1 p50 (ms, {info['latency_threads']} thread) "
             "| size (MB) | in the bundle as |", "|---|---|---|---|---:|---:|---:|---|"]
    for a in info["artifacts"]:
        measured = "" if a["measured_as"] is None else f" (as {a['measured_as']})"
        lines.append(f"| `{a['name']}` | {a['backend']} | {a['precision']} | {a['input']} | {a[key]:.4f}{measured} "
                     f"| {a['p50_ms']:.2f}{measured} | {a['size_mb']:.2f} | {a['pick']} |")
    return "\n".join(lines)


def loading_section(info: dict[str, Any]) -> str:
    """How to load the bundle's files in each runtime (a section per runtime; LiteRT when absent says so)."""
    names = [a["name"] for a in info["artifacts"]]
    pte = next((n for n in names if n.endswith(".pte")), None)
    ort = next((n for n in names if n.endswith(".ort") and "model_text" not in n), None)
    text = next((n for n in names if n.endswith("model_text.onnx")), None)
    tflite = next((n for n in names if n.endswith(".tflite")), None)
    parts = ["## How to load it", "",
             "Id artifacts take int64 `[batch, sequence]` inputs in the order and padding of `input_spec.json`, "
             "made with the files of `tokenizer/`; text artifacts take one string. Logits come out; "
             "`labels.txt` names their classes in order. `distill predict <this folder> \"some text\"` runs any of "
             "them from raw text (`--artifact NAME`), `--check` against the PyTorch model on the dev split.", ""]
    parts += ["### ExecuTorch (Python runtime; the same program loads in the Android/iOS runtime)", ""]
    parts += ["```python", "from executorch.runtime import Runtime", "import torch",
              f"method = Runtime.get().load_program(\"{pte}\").load_method(\"forward\")",
              "logits = method.execute([input_ids, attention_mask])[0]  # int64 tensors, input_spec.json's order",
              "```", ""] if pte else ["No `.pte` is among this model's picks.", ""]
    parts += ["### ONNX Runtime Mobile", ""]
    if ort:
        parts += [f"`{ort}` is ONNX Runtime's mobile format (onnxruntime-android / onnxruntime-objc load it as they "
                  f"load `.onnx`); `{ort.replace('.ort', '.required_operators.config')}` lists its operators for a "
                  "reduced build (`build.py --include_ops_by_config`).", "",
                  "```python", "import onnxruntime as ort",
                  f"session = ort.InferenceSession(\"{ort}\")",
                  "logits = session.run(None, {\"input_ids\": ids, \"attention_mask\": mask})[0]", "```", ""]
    else:
        parts += ["No `.ort` file in this bundle; the `.onnx` files load in ONNX Runtime as they are.", ""]
    if text:
        parts += [f"`{text}` (and its `.ort`) has the tokenizer inside (onnxruntime-extensions operators): register "
                  "`onnxruntime_extensions.get_library_path()` with `SessionOptions.register_custom_ops_library` "
                  "and feed `{\"text\": np.array([\"a fine film\"])}`.", ""]
    parts += ["### LiteRT", "",
              f"`{tflite}` loads with `ai_edge_litert.interpreter.Interpreter(model_path=...)`." if tflite else
              "Not built in this bundle: no `.tflite` is among this model's artifacts.", ""]
    return "\n".join(parts)


def not_shipped(info: dict[str, Any]) -> list[str]:
    """The card's line on the variants left out because they change the model's predictions, or none."""
    left_out = info.get("not_shipped") or {}
    if not left_out:
        return []
    listed = ", ".join(f"{name} ({share:.1%})".replace("%", " %") for name, share in left_out.items())
    return [f"Not shipped, because they predict the PyTorch model's class on fewer than "
            f"{AGREEMENT_TARGET:.1%} of dev rows ".replace("%", " %") + f"(in the benchmark's batches): {listed}.", ""]


def write_card(path: Path, info: dict[str, Any], dataset: str) -> Path:
    """Write the model card ``README.md`` of a bundle (see the module docstring); returns ``path``."""
    metadata = yaml.safe_dump(front_matter(info, dataset), sort_keys=False)
    body = [f"# {info['model']}", "",
            f"A distilled model of the run `{Path(info['run']).name}`, {info['task']} task, labels "
            f"{', '.join(info['labels'])}. Dev score and latency are the benchmark stage's (host CPU: "
            f"{info['machine'] or 'unknown'}; batch 1), sizes are the files' (MB of 2^20 bytes).", "",
            artifact_table(info), "", *not_shipped(info), "## How it was made", "", "```bash", info["command"], "```", "",
            loading_section(info), "Every file's SHA-256 is in `SHA256SUMS` (`sha256sum -c SHA256SUMS`).", ""]
    path.write_text(f"---\n{metadata}---\n\n" + "\n".join(body), encoding="utf-8")
    return path
