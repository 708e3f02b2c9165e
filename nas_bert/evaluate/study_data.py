"""The study's own evaluation data, beside the headline task: a task's accuracy by a linear probe on frozen sentence
vectors (what `search.choose_by: task:NAME` ranks finalists by), sentence-pair similarity sets (Spearman against the
gold scores) and out-of-domain text sets (fidelity to the teacher), each reported by name."""

from __future__ import annotations

from typing import Any

import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from nas_bert.data import load_task
from nas_bert.data.tasks import load_ood, load_pairs
from nas_bert.evaluate.metrics import fidelity
from nas_bert.evaluate.vectors import sentence_vectors, teacher_vectors
from nas_bert.evaluation_config import EvalConfig, OodData, PairData, TaskData


def linear_probe(encoder: nn.Module, tokenizer: Any, teacher: Any, cfg: EvalConfig, task: str | TaskData,
                 device: torch.device | str = "cpu", steps: int = 100) -> float:
    """A task's accuracy by a cheap linear probe on frozen sentence vectors (the teacher's pooling): a softmax
    regression fitted full-batch with L-BFGS on the train split, scored on the validation split (the test split is
    the evaluation's, never chosen on). Deterministic: zero-initialised, no RNG."""
    dd, names = load_task(task, cfg)

    def vectors(split: str) -> torch.Tensor:  # (n, hidden)
        return sentence_vectors(encoder.to(device), tokenizer, list(dd[split]["text"]), cfg.batch_size,
                                cfg.max_seq_length, device, teacher.pooling).double()

    x, v = vectors("train"), vectors("validation")
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)  # standardised: one step size serves every width
    x, v = (x - mean) / std, (v - mean) / std
    y = torch.tensor(dd["train"]["label"])
    w = torch.zeros(x.shape[1], len(names), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(names), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + bias, y) + 1e-3 * (w * w).sum()  # a little L2: separable data stays finite
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((v @ w + bias).argmax(1) == torch.tensor(dd["validation"]["label"])).double().mean())


def pair_agreement(encoder: nn.Module, tokenizer: Any, teacher: Any, cfg: EvalConfig, pairs: PairData,
                   device: torch.device | str = "cpu") -> dict[str, float]:
    """A sentence-pair set: the Spearman correlation of the encoder's cosine similarities (the teacher's pooling)
    with the gold scores, and the teacher's, for reference."""
    a, b, gold = load_pairs(pairs)

    def spearman(vec: Any) -> float:
        va, vb = vec(a), vec(b)
        rho = scipy.stats.spearmanr(F.cosine_similarity(va, vb, dim=-1).numpy(), gold).statistic
        return float(rho)  # NaN: constant similarities or scores

    encoder = encoder.to(device)
    return {"spearman": spearman(lambda t: sentence_vectors(encoder, tokenizer, t, cfg.batch_size,
                                                            cfg.fidelity_max_seq_length, device, teacher.pooling)),
            "teacher_spearman": spearman(lambda t: teacher_vectors(teacher, t, cfg, device)),
            "pairs": len(gold)}


def ood_agreement(encoder: nn.Module, tokenizer: Any, teacher: Any, cfg: EvalConfig, ood: OodData,
                  device: torch.device | str = "cpu") -> dict[str, float | None]:
    """Fidelity (and mean cosine) to the teacher on one of the study's out-of-domain sets."""
    texts = load_ood(ood)
    s_vec = sentence_vectors(encoder.to(device), tokenizer, texts, cfg.batch_size, cfg.fidelity_max_seq_length,
                             device, teacher.pooling)
    t_vec = teacher_vectors(teacher, texts, cfg, device)
    return {"fidelity": fidelity(s_vec, t_vec, centered=cfg.fidelity_centered),
            "cosine": float(F.cosine_similarity(s_vec, t_vec, dim=-1).mean()) if s_vec.shape == t_vec.shape else None}


def study_data_agreement(encoder: nn.Module, tokenizer: Any, teacher: Any, cfg: EvalConfig,
                         device: torch.device | str = "cpu") -> dict[str, Any]:
    """The study's own pair sets and out-of-domain sets, each by name (keys absent where the study has none)."""
    out: dict[str, Any] = {}
    if cfg.pairs:
        out["pairs"] = {p.name: pair_agreement(encoder, tokenizer, teacher, cfg, p, device) for p in cfg.pairs}
    if cfg.ood:
        out["ood"] = {o.name: ood_agreement(encoder, tokenizer, teacher, cfg, o, device) for o in cfg.ood}
    return out
