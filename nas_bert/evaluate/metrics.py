"""Agreement between a student and its teacher: fidelity of sentence-vector geometry, loyalty of
predictions (Xu et al. 2021), and the bootstrap interval of a fidelity."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.distance import jensenshannon
from scipy.stats import ConstantInputWarning, spearmanr


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the real (unmasked) token states: (B, T, h), (B, T) -> (B, h)."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _pair_sims(v: torch.Tensor, centered: bool) -> torch.Tensor:
    """Cosine similarities of all pairs (upper triangle) of n vectors (n, h) -> (n (n - 1) / 2,)."""
    v = v.detach().cpu().double()  # the Spearman correlation runs in scipy, on the host
    if centered:
        v = v - v.mean(0, keepdim=True)
    v = F.normalize(v, dim=-1)
    i, j = torch.triu_indices(len(v), len(v), offset=1)
    return (v @ v.T)[i, j]


def _gram(v: torch.Tensor) -> torch.Tensor:
    v = v.detach().cpu().double()
    return v @ v.T


def _subset_sims(gram: torch.Tensor, idx: torch.Tensor, centered: bool) -> torch.Tensor:
    """`_pair_sims` of the vectors `idx` from their Gram matrix (n, n): centring on the subset's mean is
    G - r_i - r_j + c (r the rows' means, c the mean), so a bootstrap resample costs O(k^2), not O(k^2 h)."""
    g = gram[idx][:, idx]
    if centered:
        r = g.mean(1)
        g = g - r[:, None] - r[None, :] + g.mean()
    norm = g.diagonal().clamp(min=0).sqrt().clamp(min=1e-12)  # F.normalize's eps
    i, j = torch.triu_indices(len(g), len(g), offset=1)
    return (g / (norm[:, None] * norm[None, :]))[i, j]


def fidelity(student_vecs: torch.Tensor, teacher_vecs: torch.Tensor, centered: bool = True) -> float:
    """Spearman correlation of the pairwise cosine similarities (upper triangle): width-free agreement.

    Centred by default: mean-pooled BERT states share a large common direction (anisotropy) that
    pushes every cosine towards 1 and drowns the geometry both models are compared on. Vectors with no geometry
    (every pair alike: a student that maps every text to one point) have none to agree on: NaN, without a warning.
    """
    if len(student_vecs) != len(teacher_vecs) or len(student_vecs) < 3:
        raise ValueError("fidelity needs the same texts (at least 3) for student and teacher")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        return float(spearmanr(_pair_sims(student_vecs, centered).numpy(),
                               _pair_sims(teacher_vecs, centered).numpy()).statistic)


def readout_fidelity(student_vecs: torch.Tensor, teacher_vecs: torch.Tensor, alpha: float = 1.0, folds: int = 2,
                     centered: bool = True) -> float:
    """`fidelity` after the best linear readout of the student's vectors into the teacher's, cross-fitted: the
    texts split into `folds` (every folds-th text), each fold's vectors mapped by a ridge regression (centred, the
    intercept unpenalised) fitted on the other folds, and the mapped vectors of all texts compared with the
    teacher's. `alpha` scales the penalty by the fitted vectors' total variance over their width, so the value
    does not depend on their scale (1: on the finalists of the two latest studies, five budgets, its rank
    agreement with their first round is 0.81-0.90, against 0.62-0.91 at 3; BENCHMARKS.md). What a student's start reaches with nothing learned but a linear map, which
    distillation learns first: a shape far from the teacher's geometry but near it up to a linear map (the
    teacher's first layer at full width) is not ranked below a narrow one whose output map was already fitted to
    the teacher."""
    return fidelity(readout_map(student_vecs, teacher_vecs, alpha, folds).float(), teacher_vecs, centered)


def readout_gain(student_vecs: torch.Tensor, embedding_vecs: torch.Tensor, teacher_vecs: torch.Tensor,
                 alpha: float = 1.0, folds: int = 2) -> float:
    """`readout_fidelity` less what the embeddings alone read out: the fidelity of what the student's mapped
    vectors add over the token embeddings' mapped vectors (pooled as the teacher pools) to what the teacher's
    vectors hold beyond those. A bag of embeddings is linearly decodable into much of a sentence encoder's output,
    which lets the readout rank a shallow student near a deep one; the gain scores only what the layers add: 0
    for the embeddings alone (and for a student that adds nothing: NaN is 0), 1 for the teacher. On the
    finalists of eleven budgets (BENCHMARKS.md, bench_proxy.py) its Kendall tau with their first round averaged
    0.85, against 0.77 for the plain zero-step fidelity and 0.76 for the readout."""
    base = readout_map(embedding_vecs, teacher_vecs, alpha, folds)
    value = fidelity((readout_map(student_vecs, teacher_vecs, alpha, folds) - base).float(),
                     (teacher_vecs.double() - base).float())
    return value if math.isfinite(value) else 0.0


def readout_map(student_vecs: torch.Tensor, teacher_vecs: torch.Tensor, alpha: float = 1.0,
                folds: int = 2) -> torch.Tensor:
    """`readout_fidelity`'s mapped vectors (float64): each fold's student vectors through the ridge map fitted on
    the other folds."""
    s, t = student_vecs.double(), teacher_vecs.double()
    if len(s) != len(t) or len(s) < 3 * folds:
        raise ValueError(f"readout fidelity needs the same texts (at least {3 * folds}) for student and teacher")
    which = torch.arange(len(s)) % folds
    mapped = torch.empty_like(t)
    for k in range(folds):
        fit, held = which != k, which == k
        mu, nu = s[fit].mean(0), t[fit].mean(0)
        a = s[fit] - mu
        lam = alpha * float((a * a).sum()) / a.shape[1]
        w = torch.linalg.solve(a.T @ a + lam * torch.eye(a.shape[1], dtype=a.dtype, device=a.device), a.T @ (t[fit] - nu))
        mapped[held] = (s[held] - mu) @ w + nu
    return mapped


def fidelity_bootstrap(student_vecs: torch.Tensor, teacher_vecs: torch.Tensor, centered: bool = True,
                       resamples: int = 200, seed: int = 0) -> list[float]:
    """`fidelity` on each bootstrap resample of the texts (without repeats inside a resample, so no pair is a
    text with itself), NaN where a resample says nothing, in the resamples' order. The resamples depend only on
    the number of texts and `seed`: two students scored on the same texts get the same resamples, so their lists
    pair up value by value (`paired_interval`)."""
    n = len(student_vecs)
    if len(teacher_vecs) != n:
        raise ValueError("fidelity needs the same texts (at least 3) for student and teacher")
    gen = torch.Generator().manual_seed(seed)
    grams = [_gram(v) for v in (student_vecs, teacher_vecs)]  # once: a resample's similarities are read off them
    values = []
    for _ in range(resamples):
        idx = torch.unique(torch.randint(0, n, (n,), generator=gen))
        if len(idx) >= 3:
            s, t = (_subset_sims(g, idx, centered).numpy() for g in grams)
            values.append(float(spearmanr(s, t).statistic))
        else:
            values.append(float("nan"))
    return values


def fidelity_interval(student_vecs: torch.Tensor, teacher_vecs: torch.Tensor, centered: bool = True,
                      resamples: int = 200, level: float = 0.9, seed: int = 0) -> tuple[float, float]:
    """A bootstrap interval of `fidelity` over the texts: the central `level` of `fidelity_bootstrap`'s values."""
    return bootstrap_interval(fidelity_bootstrap(student_vecs, teacher_vecs, centered, resamples, seed), level)


def bootstrap_interval(values: list[float], level: float = 0.9) -> tuple[float, float]:
    """The central `level` of `fidelity_bootstrap`'s values (NaN where no resample said anything): a caller that
    keeps the values too computes them once."""
    values = [v for v in values if not np.isnan(v)]
    if not values:  # too few texts to say anything
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_interval(a: list[float], b: list[float], level: float = 0.9) -> tuple[float, float]:
    """A paired bootstrap interval of fidelity(a) - fidelity(b): two students' `fidelity_bootstrap` values on
    the same texts and resamples, differenced resample by resample, the central `level` of the differences.
    Both students meet the same hard and easy texts in each resample, so what the texts add to both cancels and
    the interval is that of the difference itself (far narrower than either student's own interval)."""
    if len(a) != len(b):
        raise ValueError("paired bootstrap values must come from the same resamples (equal lengths)")
    diffs = [x - y for x, y in zip(a, b, strict=True) if x is not None and y is not None
             and not (np.isnan(x) or np.isnan(y))]
    if not diffs:
        return float("nan"), float("nan")
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def ratio_interval(student_correct: np.ndarray, teacher_correct: np.ndarray, level: float = 0.9,
                   resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """A paired bootstrap interval of accuracy(student) / accuracy(teacher) over the test examples: both are
    scored on the same resample each time, so an example hard for both counts once. It holds the test set's
    sampling only, not a second fine-tuning seed's. NaN where the teacher gets a resample all wrong."""
    s, t = np.asarray(student_correct, dtype=np.float64), np.asarray(teacher_correct, dtype=np.float64)
    if s.shape != t.shape or s.ndim != 1 or not len(s):
        raise ValueError(f"ratio_interval needs two equal-length (n,) arrays of 0/1, got {s.shape} and {t.shape}")
    idx = np.random.default_rng(seed).integers(0, len(s), (resamples, len(s)))
    ts = t[idx].mean(1)
    ratios = s[idx].mean(1)[ts > 0] / ts[ts > 0]
    if not len(ratios):
        return float("nan"), float("nan")
    lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def difference_interval(a_correct: np.ndarray, b_correct: np.ndarray, level: float = 0.9, resamples: int = 1000,
                        seed: int = 0) -> tuple[float, float, float]:
    """accuracy(a) - accuracy(b) on the same test examples, with its paired bootstrap `level` interval over them:
    (difference, low, high). Each of a, b is (n,) of 0/1 or (seeds, n), one row per fine-tuning seed: an example
    counts by its mean over the seeds, so the interval holds the test set's sampling with the seeds averaged. An
    example both get right (or wrong) adds nothing to either side of any resample, which is why the interval is far
    narrower than either accuracy's own."""
    a, b = np.atleast_2d(np.asarray(a_correct, dtype=np.float64)), np.atleast_2d(np.asarray(b_correct, dtype=np.float64))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not a.shape[1]:
        raise ValueError(f"difference_interval needs 0/1 arrays over the same test examples, got {a.shape} and {b.shape}")
    d = a.mean(0) - b.mean(0)
    idx = np.random.default_rng(seed).integers(0, len(d), (resamples, len(d)))
    lo, hi = np.quantile(d[idx].mean(1), [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)


def loyalty(student_probs: np.ndarray, teacher_probs: np.ndarray) -> dict[str, float]:
    """Label loyalty (argmax agreement) and probability loyalty (1 - mean Jensen-Shannon distance, base 2)."""
    p, q = np.asarray(student_probs, dtype=np.float64), np.asarray(teacher_probs, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 2:
        raise ValueError(f"loyalty needs two (n, classes) arrays of one shape, got {p.shape} and {q.shape}")
    # scipy returns the distance (sqrt of the divergence); rounding can make p == q give sqrt(-0.0) = nan.
    d = np.nan_to_num(jensenshannon(p, q, base=2, axis=1), nan=0.0)
    return {"label_loyalty": float((p.argmax(1) == q.argmax(1)).mean()),
            "probability_loyalty": float(1.0 - d.mean())}
