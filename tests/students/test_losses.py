"""The loss terms against values computed by hand on tiny tensors; masking, dtypes, schedules and
the configured sum in DistillationLoss.

Logits such as ``[ln 3, 0]`` are chosen so that softmax gives round probabilities (3/4, 1/4) and
every expected value below can be checked with pen and paper.
"""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from students.base import StudentOutput
from students.distillation import DistillationLoss
from students.loss_config import AttentionTermConfig, LayerTermConfig, LogitTermConfig, ScheduleConfig, TermConfig
from students.losses import (attention_loss, ce_loss, embedding_cosine_loss, hidden_mse_loss, logit_kd_loss, pkd_loss,
                             schedule_multiplier, temperature_at)
from students.terms import LossConfig

LN3 = math.log(3)
# KL([3/4, 1/4] || [1/2, 1/2]) = 3/4 ln(3/2) + 1/4 ln(1/2)
KL_34_HALF = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)


def t(values, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


# --- ce_loss ---------------------------------------------------------------------------------------

def test_ce_mean_over_labeled_rows():
    logits = t([[0.0, LN3], [0.0, 0.0]])  # softmax rows: [1/4, 3/4], [1/2, 1/2]
    assert ce_loss(logits, torch.tensor([1, 0])).item() == pytest.approx((math.log(4 / 3) + math.log(2)) / 2)
    assert ce_loss(logits, torch.tensor([1, -1])).item() == pytest.approx(math.log(4 / 3))


def test_ce_without_labels_is_zero_with_finite_gradient():
    logits = t([[0.0, LN3], [0.0, 0.0]]).requires_grad_()
    loss = ce_loss(logits, torch.tensor([-1, -1]))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros(2, 2))


def test_ce_tagger_ignores_padding_words():
    logits = t([[[0.0, LN3], [5.0, -5.0]]])  # [B=1, W=2, C=2]; word 1 is padding
    assert ce_loss(logits, torch.tensor([[1, -1]])).item() == pytest.approx(math.log(4 / 3))


# --- logit_kd_loss ---------------------------------------------------------------------------------

def test_kd_kl_with_tau_squared():
    student = t([[0.0, 0.0], [1.0, 2.0]])
    # tau = 1: row 0 is KL([3/4, 1/4] || [1/2, 1/2]); row 1 matches the teacher exactly (0).
    assert logit_kd_loss(student, t([[LN3, 0.0], [1.0, 2.0]]), 1.0, "kl").item() == pytest.approx(KL_34_HALF / 2)
    # tau = 2 with teacher logits [2 ln 3, 0]: the same distributions, scaled by tau^2 = 4.
    teacher = t([[2 * LN3, 0.0], [1.0, 2.0]])
    assert logit_kd_loss(student, teacher, 2.0, "kl").item() == pytest.approx(4 * KL_34_HALF / 2)


def test_kd_mse_of_raw_logits_ignores_temperature():
    student, teacher = t([[1.0, 2.0], [0.0, 0.0]]), t([[0.0, 0.0], [3.0, 1.0]])
    # Row 0: (1 + 4) / 2 = 2.5; row 1: (9 + 1) / 2 = 5.
    assert logit_kd_loss(student, teacher, 1.0, "mse").item() == pytest.approx(3.75)
    assert logit_kd_loss(student, teacher, 9.0, "mse").item() == pytest.approx(3.75)


def test_kd_mask_excludes_padding_positions():
    student = t([[[0.0, 0.0], [7.0, -3.0]]])  # [B=1, W=2, C=2]
    mask = torch.tensor([[True, False]])
    first = logit_kd_loss(student, t([[[LN3, 0.0], [0.0, 9.0]]]), 1.0, "kl", mask)
    second = logit_kd_loss(student, t([[[LN3, 0.0], [-4.0, 1.0]]]), 1.0, "kl", mask)
    assert first.item() == second.item() == pytest.approx(KL_34_HALF)
    assert logit_kd_loss(student, student, 1.0, "mse", torch.tensor([[False, False]])).item() == 0.0


def test_kd_background_weight_weighs_the_positions_the_teacher_calls_class_0():
    student = t([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])  # [B=1, W=3, C=2]
    # Word 0: the teacher's top class is 0 (O), KL = KL_34_HALF; word 1: class 1, KL([1/4, 3/4] || [1/2, 1/2])
    # = KL_34_HALF too, by symmetry; word 2: a padding word whose loss would be large.
    teacher = t([[[LN3, 0.0], [0.0, LN3], [0.0, 9.0]]])
    mask = torch.tensor([[True, True, False]])
    assert logit_kd_loss(student, teacher, 1.0, "kl", mask, 0.25).item() == pytest.approx(KL_34_HALF)
    # Student and teacher agree on word 1 (KL 0): the weighted mean is (0.25 * KL_34_HALF + 1 * 0) / 1.25.
    student = t([[[0.0, 0.0], [0.0, LN3], [0.0, 0.0]]])
    assert logit_kd_loss(student, teacher, 1.0, "kl", mask, 0.25).item() == pytest.approx(0.2 * KL_34_HALF)
    assert logit_kd_loss(student, teacher, 1.0, "kl", mask).item() == pytest.approx(0.5 * KL_34_HALF)


def test_kd_rejects_unknown_kind_and_shape_mismatch():
    with pytest.raises(ValueError, match="unknown kind 'cosine'"):
        logit_kd_loss(t([[0.0, 1.0]]), t([[0.0, 1.0]]), 1.0, "cosine")
    with pytest.raises(ValueError, match=r"student logits \(1, 2\) and teacher logits \(1, 3\) differ"):
        logit_kd_loss(t([[0.0, 1.0]]), t([[0.0, 1.0, 2.0]]), 1.0, "kl")


# --- hidden_mse_loss -------------------------------------------------------------------------------

def test_hidden_mse_over_real_tokens_and_dims():
    student = t([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])  # [B=1, T=3, D=2]; token 2 is padding
    teacher = t([[[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])
    # Token 0: (1 + 4) / 2 = 2.5; token 1: (4 + 9) / 2 = 6.5; mean 4.5.
    assert hidden_mse_loss(student, teacher, mask).item() == pytest.approx(4.5)
    student[0, 2] = torch.tensor([-50.0, 1e4])
    assert hidden_mse_loss(student, teacher, mask).item() == pytest.approx(4.5)


def test_hidden_mse_needs_equal_widths():
    with pytest.raises(ValueError, match=r"student \(1, 2, 2\) and teacher \(1, 2, 3\) differ.*project"):
        hidden_mse_loss(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool))


# --- attention_loss --------------------------------------------------------------------------------

# [B=1, H=1, T=3, T=3]; token 2 is padding. Real rows: student [1/2, 1/2], [1/4, 3/4];
# teacher [1, 0], [1/2, 1/2].
ATT_S = t([[[[0.5, 0.5, 0.0], [0.25, 0.75, 0.0], [0.3, 0.3, 0.4]]]])
ATT_T = t([[[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.2, 0.6]]]])
ATT_MASK = torch.tensor([[True, True, False]])


def test_attention_mse_over_real_pairs():
    # Real pairs: (0.5^2 + 0.5^2 + 0.25^2 + 0.25^2) / 4 = 0.15625.
    assert attention_loss(ATT_S, ATT_T, ATT_MASK, "mse").item() == pytest.approx(0.15625)
    # A second, identical head halves the mean.
    two_heads = attention_loss(torch.cat([ATT_S, ATT_T], 1), torch.cat([ATT_T, ATT_T], 1), ATT_MASK, "mse")
    assert two_heads.item() == pytest.approx(0.15625 / 2)


def test_attention_kl_per_query_row():
    # Row 0: 1 * ln(1 / 0.5) = ln 2; row 1: 0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.75).
    expected = (math.log(2) + 0.5 * math.log(2) + 0.5 * math.log(2 / 3)) / 2
    assert attention_loss(ATT_S, ATT_T, ATT_MASK, "kl").item() == pytest.approx(expected)


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_attention_padding_does_not_change_the_loss(kind):
    before = attention_loss(ATT_S, ATT_T, ATT_MASK, kind)
    student, teacher = ATT_S.clone(), ATT_T.clone()
    student[..., 2, :] = 0.0   # padded query row, including a zero the KL's log would meet
    student[..., :, 2] = 0.9   # padded key column
    teacher[..., 2, :] = 1.0
    student.requires_grad_()
    after = attention_loss(student, teacher, ATT_MASK, kind)
    after.backward()
    assert after.item() == pytest.approx(before.item())
    assert torch.isfinite(student.grad).all() and (student.grad[..., 2, :] == 0).all()


def test_attention_head_counts_must_match():
    with pytest.raises(ValueError, match="the student has 2 heads and the teacher maps 1"):
        attention_loss(torch.cat([ATT_S, ATT_S], 1), ATT_T, ATT_MASK, "mse")


# --- embedding_cosine_loss and pkd_loss ------------------------------------------------------------

def test_embedding_cosine_over_real_tokens():
    student = t([[[1.0, 0.0], [1.0, 1.0], [5.0, -2.0]]])
    teacher = t([[[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, True, False]])
    # Token 0 is orthogonal (1 - 0); token 1 at 45 degrees (1 - 1/sqrt 2).
    expected = (1 + 1 - 1 / math.sqrt(2)) / 2
    assert embedding_cosine_loss(student, teacher, mask).item() == pytest.approx(expected)
    student[0, 2] = torch.tensor([-1.0, -1.0])
    assert embedding_cosine_loss(student, teacher, mask).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"student \(1, 3, 2\) and teacher \(1, 3, 3\) differ"):
        embedding_cosine_loss(student, torch.zeros(1, 3, 3), mask)


def test_pkd_normalised_distance():
    # Row 0: [3, 4]/5 - [4, 3]/5 = [-0.2, 0.2] -> 0.08; row 1: [1, 0] - [0, -1] = [1, 1] -> 2.
    assert pkd_loss(t([[3.0, 4.0], [1.0, 0.0]]), t([[4.0, 3.0], [0.0, -2.0]])).item() == pytest.approx(1.04)
    with pytest.raises(ValueError, match="project the student state first"):
        pkd_loss(torch.zeros(2, 2), torch.zeros(2, 3))


def test_float16_inputs_give_float32_results():
    h = torch.float16
    mask = torch.tensor([[True, True, False]])
    results = [
        ce_loss(t([[0.0, LN3]], h), torch.tensor([1])),
        logit_kd_loss(t([[0.0, 0.0]], h), t([[LN3, 0.0]], h), 1.0, "kl"),
        logit_kd_loss(t([[0.0, 0.0]], h), t([[LN3, 0.0]], h), 1.0, "mse"),
        hidden_mse_loss(torch.ones(1, 3, 2, dtype=h), torch.zeros(1, 3, 2, dtype=h), mask),
        attention_loss(ATT_S.to(h), ATT_T.to(h), ATT_MASK, "kl"),
        attention_loss(ATT_S.to(h), ATT_T.to(h), ATT_MASK, "mse"),
        embedding_cosine_loss(torch.ones(1, 3, 2, dtype=h), torch.ones(1, 3, 2, dtype=h), mask),
        pkd_loss(t([[3.0, 4.0]], h), t([[4.0, 3.0]], h)),
    ]
    assert [r.dtype for r in results] == [torch.float32] * len(results)
    assert results[1].item() == pytest.approx(KL_34_HALF, rel=1e-3)


# --- schedules -------------------------------------------------------------------------------------

def test_schedule_multipliers():
    warmup = ScheduleConfig(kind="linear_warmup", over=0.5)
    decay = ScheduleConfig(kind="linear_decay", final=0.2)
    assert [schedule_multiplier(warmup, p) for p in (0, 0.25, 0.5, 1)] == pytest.approx([0, 0.5, 1, 1])
    assert [schedule_multiplier(decay, p) for p in (0, 0.5, 1)] == pytest.approx([1, 0.6, 0.2])
    assert schedule_multiplier(None, 0.3) == 1.0
    with pytest.raises(ValueError, match=r"progress must be in \[0, 1\], got 1.5"):
        schedule_multiplier(decay, 1.5)


def test_temperature_schedule():
    scheduled = LossConfig(temperature=4.0, final_temperature=1.0)
    assert [temperature_at(scheduled, p) for p in (0, 0.5, 1)] == pytest.approx([4.0, 2.5, 1.0])
    assert temperature_at(LossConfig(temperature=3.0), 0.7) == 3.0


def test_layer_maps_start_at_the_first_usable_layer():
    with pytest.raises(ValidationError, match="below 0"):
        LayerTermConfig(layer_map={-1: 0})
    with pytest.raises(ValidationError, match="below 1"):
        AttentionTermConfig(layer_map={0: 1})


# --- DistillationLoss ------------------------------------------------------------------------------

def full_config(**overrides) -> LossConfig:
    terms = dict(
        ce=TermConfig(weight=1.0),
        kd=LogitTermConfig(weight=2.0, schedule=ScheduleConfig(kind="linear_warmup")),
        hidden=LayerTermConfig(weight=3.0, layer_map={2: 1}),
        attention=AttentionTermConfig(weight=1.0, layer_map={2: 1}),
        pkd=LayerTermConfig(weight=4.0, layer_map={2: 1}, schedule=ScheduleConfig(kind="linear_decay")),
    )
    return LossConfig(**{**terms, **overrides})


def student_output(width: int = 2) -> StudentOutput:
    """B=1, T=2 (both real), C=2, one layer with one head."""
    layer1 = t([[[1.0, 2.0], [3.0, 4.0]]]) if width == 2 else torch.ones(1, 2, width)
    return StudentOutput(logits=t([[0.0, 0.0]]), hidden_states=(torch.zeros(1, 2, width), layer1),
                         attentions=(t([[[[0.5, 0.5], [0.5, 0.5]]]]),))


TEACHER = {"logits": t([[2 * LN3, 0.0]]), "hidden_2": t([[[1.0, 2.0, 1.0], [3.0, 4.0, 2.0]]]),
           "attention_2": t([[[[1.0, 0.0], [0.5, 0.5]]]]), "mask": torch.tensor([[True, True]])}


def test_distillation_loss_projects_and_sums_the_weighted_terms():
    module = DistillationLoss(full_config(), student_hidden_size=2, teacher_hidden_size=3)
    assert sorted(module.projections) == ["hidden", "pkd"]
    params = dict(module.named_parameters())
    assert {k: tuple(v.shape) for k, v in params.items()} == {
        "projections.hidden.weight": (3, 2), "projections.hidden.bias": (3,),
        "projections.pkd.weight": (3, 2), "projections.pkd.bias": (3,)}
    assert all(p.requires_grad for p in params.values())
    with torch.no_grad():  # W_h maps [a, b] to [a, b, 0]
        for name in ("hidden", "pkd"):
            module.projections[name].weight.copy_(t([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
            module.projections[name].bias.zero_()

    out = module(student_output(), TEACHER, torch.tensor([1]), None, progress=0.5)

    assert out.weights == pytest.approx({"ce": 1.0, "kd": 1.0, "hidden": 3.0, "attention": 1.0, "pkd": 2.0})
    hand = {
        "ce": math.log(2),  # softmax [1/2, 1/2]
        "kd": 4 * KL_34_HALF,  # tau = 2 (default) on [2 ln 3, 0]: p = [3/4, 1/4], times tau^2
        "hidden": (1 / 3 + 4 / 3) / 2,  # [1, 2, 0] vs [1, 2, 1], [3, 4, 0] vs [3, 4, 2]
        "attention": (0.5**2 * 2 + 0) / 4,  # row 0 differs by 0.5 twice, row 1 matches
        "pkd": 2 - 2 * 5 / math.sqrt(30),  # [CLS]: ||a/|a| - b/|b|||^2 = 2 - 2 cos, cos([1,2,0], [1,2,1])
    }
    assert {k: v.item() for k, v in out.terms.items()} == pytest.approx(hand, rel=1e-5)
    assert out.total.item() == pytest.approx(sum(out.weights[k] * hand[k] for k in hand), rel=1e-5)

    out.total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())


def test_equal_widths_need_no_projection_and_allow_embedding_cosine():
    cfg = LossConfig(ce=None, kd=None, embedding_cosine=LayerTermConfig(layer_map={2: 1}),
                     hidden=LayerTermConfig(layer_map={2: 1}))
    module = DistillationLoss(cfg, student_hidden_size=3, teacher_hidden_size=3)
    assert list(module.parameters()) == []
    teacher = {**TEACHER, "hidden_2": torch.ones(1, 2, 3)}
    out = module(student_output(width=3), teacher, torch.tensor([-1]), None, progress=0.0)
    assert out.terms["embedding_cosine"].item() == pytest.approx(0.0, abs=1e-6)
    assert out.terms["hidden"].item() == 0.0


def test_embedding_cosine_with_different_widths_is_refused():
    with pytest.raises(ValueError, match="embedding_cosine needs equal widths, got student 2 and teacher 3"):
        DistillationLoss(LossConfig(embedding_cosine=LayerTermConfig(layer_map={0: 0})), 2, 3)
    with pytest.raises(ValueError, match="train.loss.hidden needs hidden states"):
        DistillationLoss(LossConfig(hidden=LayerTermConfig(layer_map={0: 0})), None, 3)


def test_ce_only_batch_without_teacher_signals():
    module = DistillationLoss(LossConfig().ce_only(), None, None)
    out = module(student_output(), {}, torch.tensor([0]), None, progress=0.0)
    assert out.total.item() == pytest.approx(math.log(2))
    assert out.terms.keys() == out.weights.keys() == {"ce"}


def test_missing_teacher_signal_names_the_term_and_the_emit_setting():
    module = DistillationLoss(full_config(), 2, 3)
    with pytest.raises(ValueError, match="train.loss.kd needs the teacher signal 'logits'"):
        module(student_output(), {}, torch.tensor([1]), None, progress=0.5)
    without_hidden = {k: v for k, v in TEACHER.items() if k != "hidden_2"}
    with pytest.raises(ValueError, match=r"train.loss.hidden needs the teacher signal 'hidden_2'.*"
                                         r"add 2 to label.emit.hidden_layers"):
        module(student_output(), without_hidden, torch.tensor([1]), None, progress=0.5)


def test_layer_map_past_the_student_is_reported():
    module = DistillationLoss(full_config(hidden=LayerTermConfig(layer_map={2: 4})), 2, 3)
    with pytest.raises(ValueError, match="hidden.layer_map names student layer 4, but the student's hidden "
                                         "states cover layers 0..1"):
        module(student_output(), TEACHER, torch.tensor([1]), None, progress=0.5)
    no_layers = StudentOutput(logits=t([[0.0, 0.0]]))
    with pytest.raises(ValueError, match="does not return"):
        module(no_layers, TEACHER, torch.tensor([1]), None, progress=0.5)


def test_a_tagger_batch_averages_over_its_real_words_not_its_sentences_or_padding():
    """CE over the labeled real words, KD over the real words the teacher saw; each a mean over
    words of the whole batch (a long sentence weighs as its words), padding never counted."""
    pad = [9.0, -9.0]  # any value at padding words or words outside a term's mask
    student = t([[[0.0, LN3], [0.0, 0.0], [0.0, 0.0]],  # sentence 0: 3 words
                 [[0.0, LN3], pad, [-9.0, 9.0]]])  # sentence 1: 1 word, 2 padding
    teacher = {"logits": t([[[LN3, 0.0], [0.0, 0.0], pad], [[0.0, LN3], pad, pad]])}
    labels = torch.tensor([[1, 0, 1], [1, -1, -1]])
    seen = torch.tensor([[True, True, False], [True, False, False]])  # word 3 is past the teacher's max_length
    module = DistillationLoss(LossConfig(ce=TermConfig(weight=0.5), kd=LogitTermConfig(weight=0.5), temperature=1.0),
                              None, None)
    out = module(StudentOutput(logits=student), teacher, labels, seen, progress=0.0)
    ce = (2 * math.log(4 / 3) + 2 * math.log(2)) / 4  # softmax [1/4, 3/4] right twice, [1/2, 1/2] twice
    kd = (0.75 * LN3 - 0.25 * LN3) / 3  # KL([3/4, 1/4] || [1/4, 3/4]) at word 1; the other 2 seen words match
    assert out.terms["ce"].item() == pytest.approx(ce) and out.terms["kd"].item() == pytest.approx(kd)
    assert out.total.item() == pytest.approx(0.5 * ce + 0.5 * kd)
