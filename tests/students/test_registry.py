"""The two extension tables, students.registry.FAMILIES and students.terms.TERMS: the README names
exactly their entries, and the config and dispatch read them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from core.errors import ArtifactError, ConfigError
from students.base import BuildInputs
from students.loss_config import LossConfigBase
from students.registry import FAMILIES, build_student, family, load_student
from students.terms import TERMS, LossConfig, teacher_layers

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_families() -> list[str]:
    """The families of the README's table: rows ``| `name` | `students/...` | ... |``."""
    return re.findall(r"^\| `(\w+)` \| `students/", README.read_text(encoding="utf-8"), flags=re.MULTILINE)


def readme_loss_terms() -> list[str]:
    """The keys under ``loss:`` in the README's YAML example of ``train.loss``, less the temperature fields."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"^  loss:\n((?:    .*\n)+)", text, flags=re.MULTILINE)
    assert block, "README.md has no YAML block with a 'loss:' section"
    keys = re.findall(r"^    (\w+):", block.group(1), flags=re.MULTILINE)
    return [key for key in keys if key not in LossConfigBase.model_fields]


def test_readme_family_table_names_every_registered_family():
    documented = readme_families()
    assert sorted(documented) == sorted(FAMILIES), (
        f"README.md's family table and students.registry.FAMILIES differ: only in the README "
        f"{sorted(set(documented) - set(FAMILIES))}, only in the registry {sorted(set(FAMILIES) - set(documented))}")


def test_readme_loss_example_names_every_registered_term():
    documented = readme_loss_terms()
    assert sorted(documented) == sorted(TERMS), (
        f"README.md's train.loss example and students.terms.TERMS differ: only in the README "
        f"{sorted(set(documented) - set(TERMS))}, only in the registry {sorted(set(TERMS) - set(documented))}")


def test_every_family_config_is_tagged_by_its_name():
    for name, entry in FAMILIES.items():
        assert entry.config.model_fields["family"].default == name


def test_loss_config_has_one_field_per_term_with_the_term_type():
    assert LossConfig.term_names() == list(TERMS)
    for name, term in TERMS.items():
        assert LossConfig.model_fields[name].default == term.default
    assert list(LossConfig().terms()) == ["ce", "kd"]


def test_teacher_layers_follow_each_terms_signal():
    loss = LossConfig(hidden={"layer_map": {3: 2}}, pkd={"layer_map": {6: 4, 3: 1}},
                      attention={"layer_map": {6: 4}})
    assert teacher_layers(loss) == {"hidden": [3, 6], "attention": [6]}


def test_unknown_family_lists_the_choices(tmp_path):
    class Fake:
        family = "gru"

    with pytest.raises(ConfigError, match=r"unknown student family 'gru'; choose from \['bilstm', 'cnn_lstm', "
                                          r"'multitask_lstm', 'transformer'\]"):
        build_student(Fake(), BuildInputs(tmp_path))
    assert family("cnn_lstm").tags_tokens and not family("bilstm").tags_tokens
    (tmp_path / "student.json").write_text(json.dumps({"family": "gru"}))
    with pytest.raises(ArtifactError, match="names student family 'gru'; known: "):
        load_student(tmp_path)


def test_build_student_dispatches_on_the_family(tmp_path):
    tagger = build_student(FAMILIES["cnn_lstm"].config(word_embed_dim=4, char_embed_dim=2, char_filters=3,
                                                       hidden_dim=4, init_from_teacher_embeddings=False),
                           BuildInputs(tmp_path, [["Alice", "met", "Bob"]], num_labels=5))
    assert tagger.family == "cnn_lstm" and tagger.num_labels == 5
    with pytest.raises(ValueError, match="give BuildInputs.num_labels"):
        build_student(FAMILIES["cnn_lstm"].config(), BuildInputs(tmp_path, [["a"]]))
