"""The bootstrap of fidelity over texts, and the paired interval of two students' difference on the same texts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nas_bert.evaluate import (
    bootstrap_interval,
    difference_interval,
    fidelity_bootstrap,
    fidelity_interval,
    paired_interval,
)
from nas_bert.evaluate.metrics import ratio_interval


def _vectors(seed: int, n: int = 60, h: int = 16) -> torch.Tensor:
    return torch.randn(n, h, generator=torch.Generator().manual_seed(seed))


def test_the_interval_is_the_bootstrap_values_central_part() -> None:
    t = _vectors(0)
    s = t + 0.8 * _vectors(1)
    values = [v for v in fidelity_bootstrap(s, t) if not np.isnan(v)]
    assert len(fidelity_bootstrap(s, t)) == 200
    assert fidelity_interval(s, t) == tuple(np.quantile(values, [0.05, 0.95]).tolist())
    # a caller holding the values (a finalist keeps them for paired intervals) reads the same interval off them
    assert bootstrap_interval(fidelity_bootstrap(s, t)) == fidelity_interval(s, t)
    assert bootstrap_interval(fidelity_bootstrap(s, t), level=0.5) == fidelity_interval(s, t, level=0.5)
    assert all(np.isnan(x) for x in bootstrap_interval([float("nan")] * 3))


def test_two_students_on_the_same_texts_pair_up() -> None:
    t = _vectors(0)
    close, far = t + 0.5 * _vectors(1), t + 1.5 * _vectors(2)
    a, b = fidelity_bootstrap(close, t), fidelity_bootstrap(far, t)
    lo, hi = paired_interval(a, b)
    assert 0 < lo <= hi  # the closer student is better on every resample's texts
    assert paired_interval(a, a) == (0.0, 0.0)
    # the paired interval of the difference is narrower than the two students' own intervals side by side
    (a_lo, a_hi), (b_lo, b_hi) = fidelity_interval(close, t), fidelity_interval(far, t)
    assert hi - lo < (a_hi - a_lo) + (b_hi - b_lo)
    mirrored = paired_interval(b, a)
    assert np.allclose(mirrored, (-hi, -lo))


def test_the_accuracy_ratio_interval_pairs_examples_and_narrows_with_more_of_them() -> None:
    rng = np.random.default_rng(0)
    teacher = rng.random(400) < 0.8
    student = teacher & (rng.random(400) < 0.9)  # right only where the teacher is, 90% of those
    ratio = student.mean() / teacher.mean()
    lo, hi = ratio_interval(student, teacher)
    assert lo < ratio < hi <= 1.0  # never above the teacher: paired, each resample has the student's subset
    wide = ratio_interval(student[:100], teacher[:100])
    assert wide[1] - wide[0] > hi - lo
    unpaired = ratio_interval(student, rng.permutation(teacher))
    assert unpaired[1] - unpaired[0] > hi - lo  # pairing removes what the examples' difficulty adds to both
    assert ratio_interval(teacher, teacher) == (1.0, 1.0)
    assert all(np.isnan(ratio_interval(student, np.zeros(400, dtype=bool))))
    with pytest.raises(ValueError, match="equal-length"):
        ratio_interval(student, teacher[:10])


def test_the_accuracy_difference_pairs_examples_and_averages_seeds() -> None:
    rng = np.random.default_rng(1)
    a = rng.random(2000) < 0.8
    b = a.copy()
    flip = rng.choice(2000, 60, replace=False)  # b set wrong on 40 examples, right on 20
    b[flip[:40]], b[flip[40:]] = False, True
    d, lo, hi = difference_interval(a, b)
    assert d == pytest.approx(a.mean() - b.mean())
    assert lo <= d <= hi
    # paired: far narrower than the two accuracies' own 90% intervals (each about +-0.015 on 2000 examples)
    assert hi - lo < 0.02
    assert difference_interval(a, a) == (0.0, 0.0, 0.0)
    d2, lo2, hi2 = difference_interval(b, a)
    assert (d2, lo2, hi2) == pytest.approx((-d, -hi, -lo))
    # several seeds: each example counts by its mean over them
    seeds_a, seeds_b = np.stack([a, a]), np.stack([b, a])
    assert difference_interval(seeds_a, seeds_b)[0] == pytest.approx((a.mean() - b.mean()) / 2)
    with pytest.raises(ValueError, match="same test examples"):
        difference_interval(a, b[:-1])
