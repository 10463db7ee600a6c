"""The blended distillation loss: hard-label cross-entropy plus a soft-label KD term.

One loss path serves every student: it reads only ``logits [B, C]`` from the student and the
teacher, so a BiLSTM and a transformer student are trained by the same code.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

NO_LABEL = -1
"""Label of a row without a hard label; it gets the KD term only (same value as ``pipeline.data``)."""


class KDLoss(NamedTuple):
    """The three terms of :func:`blended_kd_loss`, each a float32 scalar tensor.

    Attributes:
        total: the loss to back-propagate: mean over all rows of the per-row blend.
        ce: mean cross-entropy over the rows with a hard label (0 when there are none).
        kd: mean KD term over all rows (0 when no teacher logits were given).
    """

    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor


def blended_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor, *,
                    alpha: float, temperature: float, kd: Literal["kl", "mse"]) -> KDLoss:
    """Blend of hard-label cross-entropy and soft-label distillation (Hinton et al. 2015).

    Per row ``i``, with student logits ``s``, teacher logits ``t`` and temperature ``tau``::

        CE_i = -log softmax(s_i)[y_i]
        KD_i = tau^2 * sum_c p_c * (log p_c - log q_c),  p = softmax(t_i / tau), q = softmax(s_i / tau)
                                                          (kd = "kl", Hinton et al. 2015)
        KD_i = (1 / C) * sum_c (s_ic - t_ic)^2          (kd = "mse", raw logits, Tang et al. 2019)

        L_i  = alpha * CE_i + (1 - alpha) * KD_i         if row i has a hard label
        L_i  = KD_i                                      if y_i == -1 (no hard label)

        total = (1 / B) * sum_i L_i

    The ``tau^2`` factor keeps the gradient of the KL term on the same scale as the CE term
    whatever the temperature (Hinton et al. 2015, section 2); the MSE term has no temperature.
    Everything is computed in float32, whatever the dtype of the logits (e.g. under autocast).

    Args:
        student_logits: float tensor [B, C].
        teacher_logits: float tensor [B, C], or None for a CE-only student; None requires
            ``alpha == 1`` and a hard label on every row.
        labels: int64 tensor [B] of class indices, -1 for a row without a hard label.
        alpha: weight of the CE term on labeled rows, in [0, 1].
        temperature: ``tau`` > 0, used by ``kd = "kl"`` only.
        kd: "kl" or "mse".

    Returns:
        :class:`KDLoss` with float32 scalars ``total``, ``ce`` (mean over labeled rows; 0, not
        NaN, when no row is labeled) and ``kd`` (mean over all rows).

    Raises:
        ValueError: on an unknown ``kd``, or teacher logits missing where the KD term is needed.
    """
    if kd not in ("kl", "mse"):
        raise ValueError(f"unknown kd {kd!r}; choose from ['kl', 'mse']")
    s = student_logits.float()
    labeled = labels != NO_LABEL  # [B] bool
    if teacher_logits is None:
        if alpha != 1 or not bool(labeled.all()):
            raise ValueError("teacher logits are required unless alpha == 1 and every row has a hard label")
        ce = F.cross_entropy(s, labels)
        return KDLoss(total=ce, ce=ce, kd=torch.zeros((), device=s.device))

    t = teacher_logits.float()
    if kd == "kl":
        log_q = F.log_softmax(s / temperature, dim=-1)  # [B, C] student
        log_p = F.log_softmax(t / temperature, dim=-1)  # [B, C] teacher
        kd_rows = temperature**2 * (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # [B]
    else:
        kd_rows = (s - t).pow(2).mean(dim=-1)  # [B]

    # Unlabeled rows get a dummy target 0; their CE is zeroed by the mask.
    ce_rows = F.cross_entropy(s, labels.clamp(min=0), reduction="none") * labeled  # [B]
    total_rows = torch.where(labeled, alpha * ce_rows + (1 - alpha) * kd_rows, kd_rows)  # [B]
    ce = ce_rows.sum() / labeled.sum().clamp(min=1)
    return KDLoss(total=total_rows.mean(), ce=ce, kd=kd_rows.mean())
