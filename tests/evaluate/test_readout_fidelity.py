"""Fidelity after a cross-fitted linear readout (the search's "readout" proxy)."""

from __future__ import annotations

import math

import pytest
import torch

from nas_bert.evaluate import fidelity, readout_fidelity


def _vectors(seed: int, n: int = 200, h: int = 16) -> torch.Tensor:
    return torch.randn(n, h, generator=torch.Generator().manual_seed(seed))


def test_a_student_a_linear_map_away_from_the_teacher_reads_out_as_the_teacher() -> None:
    """A student whose vectors are the teacher's under a fixed linear map (of another width) has a low fidelity
    as it is and a near-perfect one read out; noise reads out as noise; no fold sees its own texts' targets."""
    t = _vectors(0)
    mix = torch.randn(16, 24, generator=torch.Generator().manual_seed(1))
    s = t @ mix + 3.0
    assert fidelity(s, t) < 0.8
    assert readout_fidelity(s, t, alpha=1e-3) > 0.97
    assert abs(readout_fidelity(_vectors(2, h=24), t)) < 0.2  # cross-fitted: a random student learns nothing


def test_the_readout_is_free_of_scale_and_ranks_a_nearer_student_higher() -> None:
    t = _vectors(0)
    mix = torch.randn(16, 16, generator=torch.Generator().manual_seed(3))
    near, far = t @ mix + 0.3 * _vectors(4), t @ mix + 1.5 * _vectors(5)
    assert readout_fidelity(near, t) > readout_fidelity(far, t)
    assert readout_fidelity(1000 * near + 5, t) == pytest.approx(readout_fidelity(near, t), abs=1e-6)


def test_too_few_texts_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 6"):
        readout_fidelity(_vectors(0, n=5), _vectors(1, n=5))


def test_the_gain_scores_only_what_a_student_adds_over_the_embeddings() -> None:
    """`readout_gain` (`search.proxy: gain`): the embeddings alone, or a student that is a linear map of them, gain
    nothing however well they read out; the teacher gains all; a student holding part of what the teacher adds
    over the embeddings gains in proportion, where the plain readout would rank it near the embeddings."""
    from nas_bert.evaluate import readout_gain

    emb, extra = _vectors(0), _vectors(1)
    t = emb @ torch.randn(16, 16, generator=torch.Generator().manual_seed(2)) + extra  # the layers add `extra`
    a = 1e-3  # a light ridge: 200 synthetic texts, 16-32 dimensions
    assert readout_gain(emb, emb, t, a) == pytest.approx(0.0, abs=0.05)
    assert abs(readout_gain(2 * emb + 1, emb, t, a)) < 0.1  # a linear map of the embeddings adds nothing
    assert readout_gain(t, emb, t, a) > 0.95 and readout_gain(torch.cat([emb, extra], 1), emb, t, a) > 0.95
    half = readout_gain(torch.cat([emb, extra[:, :8]], 1), emb, t, a)  # half of what the layers add
    assert 0.4 < half < 0.9
    # the plain readout already ranks the embeddings alone high: what the gain leaves out
    assert readout_fidelity(emb, t, a) > 0.5


def test_vectors_with_no_geometry_have_no_fidelity_and_no_warning() -> None:
    """Every text at one point (an all-identity student's gain over the embeddings): NaN, the gain 0, silently."""
    import warnings

    from nas_bert.evaluate import readout_gain

    emb, t = _vectors(0), _vectors(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(fidelity(torch.ones_like(t), t))
        assert readout_gain(emb, emb, t) == 0.0
