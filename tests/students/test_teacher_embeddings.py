"""The teacher's word embeddings reduced to a narrower student table (students/teacher_embeddings.py)."""

import pytest
import torch

from students.teacher_embeddings import principal_components


def test_a_table_of_low_rank_keeps_every_distance_in_as_many_components():
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(50, 3, generator=generator) @ torch.randn(3, 8, generator=generator) + 5.0  # rank 3, offset
    reduced = principal_components(table, 3)
    assert reduced.shape == (50, 3)
    exact = "donot_use_mm_for_euclid_dist"
    assert torch.allclose(torch.cdist(reduced, reduced, compute_mode=exact), torch.cdist(table, table, compute_mode=exact),
                          atol=1e-3)
    assert torch.allclose(reduced.mean(dim=0), torch.zeros(3), atol=1e-5)  # centred


def test_the_components_come_in_order_of_variance_and_are_uncorrelated():
    generator = torch.Generator().manual_seed(1)
    table = torch.randn(400, 6, generator=generator) * torch.tensor([5.0, 1.0, 3.0, 0.5, 2.0, 0.1])
    reduced = principal_components(table, 4)
    variances = reduced.var(dim=0)
    assert torch.all(variances[:-1] > variances[1:])
    assert variances[0] > 20 and variances[-1] < 2  # the axes of spread 5 and 1 (variance 25 and 1)
    covariance = reduced.T @ reduced / (len(reduced) - 1)
    assert torch.allclose(covariance - torch.diag(torch.diag(covariance)), torch.zeros(4, 4), atol=1e-3)


def test_a_width_beyond_the_table_is_refused():
    with pytest.raises(ValueError, match="cannot reduce a 6-wide table to 7 columns"):
        principal_components(torch.zeros(10, 6), 7)
