"""The conventions of the ``distill`` command line: ``presets`` describes each preset, ``show`` prints a
config that loads back unchanged, ``--version``, stages as choices, and each ``bench`` measurement
taking only the flags it acts on. Everything runs through the real parser and ``main``; nothing
starts Ray."""

from __future__ import annotations

import importlib.metadata

import pytest
import yaml

from pipeline.cli.main import DESCRIPTION, build_parser, main
from pipeline.config.loading import load_config, preset_names
from pipeline.config.resolved import leading_sentence, preset_description
from pipeline.runner import STAGES
from pipeline.stages import STAGE_NAMES


def show(capsys, *argv: str) -> str:
    """What ``distill show ARGV`` prints, after checking it exits 0."""
    assert main(["show", *argv]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("preset", ["sst2-ship", "sst2-mpnet-ship", "sst2-conll2003-multitask"])
def test_show_prints_a_config_that_loads_back_equal(preset, capsys, tmp_path):
    text = show(capsys, preset)
    raw = yaml.safe_load(text)
    assert "base" not in raw  # the bases are merged in
    assert raw["evaluate"] == {"latency_runs": load_config(preset).evaluate.latency_runs,
                               "latency_warmup": load_config(preset).evaluate.latency_warmup}  # defaults written
    saved = tmp_path / "copy.yaml"
    saved.write_text(text, encoding="utf-8")
    assert load_config(saved) == load_config(preset)


def test_show_applies_overrides_and_keeps_one_of_text_column_and_text_columns(capsys, tmp_path):
    config = tmp_path / "news.yaml"
    config.write_text(yaml.safe_dump({"name": "news", "data": {"train": {"path": "a.tsv"}, "dev": {"path": "b.tsv"},
                                                                "labels": [0, 1], "text_columns": ["title", "body"]}}))
    text = show(capsys, str(config), "--set", "train.epochs=7")
    assert text.splitlines()[0] == f"# {config} --set train.epochs=7, resolved: bases merged, defaults written out"
    raw = yaml.safe_load(text)
    assert raw["train"]["epochs"] == 7 and raw["data"]["text_columns"] == ["title", "body"]
    assert raw["train"]["lr"] == 1e-3 and raw["label"]["shard_rows"] == 2048  # defaults written out
    assert "text_column" not in raw["data"]  # a config may name only one of the two
    saved = tmp_path / "copy.yaml"
    saved.write_text(text, encoding="utf-8")
    assert load_config(saved) == load_config(config, ["train.epochs=7"])


def test_show_of_a_bad_config_prints_one_line_and_exits_2(capsys):
    assert main(["show", "sst2-quick", "--set", "train.epoch=3"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("distill: error: preset 'sst2-quick': ") and "train.epochs" in captured.err


def test_presets_lists_every_preset_with_its_description(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == preset_names()
    for line, name in zip(lines, preset_names()):
        description = preset_description(name)
        assert description and len(description) <= 100, name
        assert line.endswith(description) and line[len(name):].startswith("  ")


def test_leading_sentence_stops_at_the_first_full_stop_that_ends_a_sentence():
    text = ("# Tang et al. (2019) at their scale, e.g. 10x rows: the sst2 run\n"
            "# grown by augmentation. Then a second sentence.\n"
            "name: x\n# not the leading comment\n")
    assert leading_sentence(text) == "Tang et al. (2019) at their scale, e.g. 10x rows: the sst2 run grown by augmentation"
    assert leading_sentence("name: x\n") == ""
    long = "# " + "word " * 40 + "\n"
    assert leading_sentence(long) == ("word " * 19).strip() + " ..."  # 19 words and the placeholder: 99 characters


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"distill {importlib.metadata.version('distill')}"


def test_stages_are_choices_in_pipeline_order(capsys):
    assert STAGE_NAMES == tuple(STAGES)
    assert build_parser().parse_args(["run", "x", "--until", "label", "--force", "data"]).force == ["data"]
    for argv in (["run", "x", "--until", "fine"], ["run", "x", "--force", "tran"],
                 ["submit", "x", "--address", "http://h:8265", "--until", "fine"]):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(argv)
        assert exit_.value.code == 2
        assert "(choose from 'data', 'finetune', 'label', 'train', 'evaluate', 'prune', 'export', 'quantize', " \
               "'benchmark')" in capsys.readouterr().err


def test_each_bench_measurement_takes_only_its_flags(capsys):
    args = build_parser().parse_args(["bench", "label", "sst2", "--rows", "10", "--logits-only", "--engines",
                                      "inference,zero", "--set", "name=b"])
    assert (args.what, args.config, args.rows, args.logits_only, args.engines, args.overrides) == \
        ("label", "sst2", 10, True, ["inference", "zero"], ["name=b"])
    assert build_parser().parse_args(["bench", "label", "sst2", "--emit-layers", "2,4"]).emit_layers == (2, 4)
    assert build_parser().parse_args(["bench", "latency", "sst2", "--set", "benchmark.runs=5"]).overrides == \
        ["benchmark.runs=5"]
    for argv, refused in ((["bench", "readback", "sst2", "--rows", "10"], "--rows"),
                          (["bench", "latency", "sst2", "--logits-only"], "--logits-only"),
                          (["bench", "readback", "sst2", "--engines", "zero"], "--engines"),
                          (["bench", "label", "sst2", "--emit-layers", "3,6", "--logits-only"], "not allowed with"),
                          (["bench", "sst2"], "invalid choice: 'sst2'")):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(argv)
        assert exit_.value.code == 2
        assert refused in capsys.readouterr().err


def test_top_level_help_says_what_the_tool_does_in_one_sentence(capsys):
    assert DESCRIPTION.endswith(".") and ". " not in DESCRIPTION and DESCRIPTION.startswith("Distil")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "".join(DESCRIPTION.split()) in "".join(capsys.readouterr().out.split())  # wrapped, at hyphens too
