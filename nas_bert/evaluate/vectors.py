"""Sentence vectors of any encoder (a student, the teacher) with the teacher's pooling, and the teacher's own, kept
once per process: what every agreement measure of stage 8 compares."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nas_bert.evaluate.metrics import mean_pool
from nas_bert.evaluation_config import EvalConfig
from nas_bert.store import sha256_hex


def batch(tokenizer: Any, texts: list[str], max_len: int, device: torch.device | str) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}


@torch.no_grad()
def sentence_vectors(encoder: nn.Module, tokenizer: Any, texts: list[str], batch_size: int, max_len: int,
                     device: torch.device | str, pooling: Any = None) -> torch.Tensor:
    """The sentence vector of each text, (n, hidden), on the CPU: `pooling` (a teacher.Pooling) of the
    last_hidden_state, mean pooling without one; any such encoder works."""
    was_training = encoder.training
    encoder.eval()  # dropout off: vectors must not depend on the RNG
    out = []
    for i in range(0, len(texts), batch_size):
        b = batch(tokenizer, list(texts[i : i + batch_size]), max_len, device)
        states = encoder(**b).last_hidden_state
        vecs = pooling(states, b["attention_mask"]) if pooling is not None else mean_pool(states, b["attention_mask"])
        out.append(vecs.float().cpu())
    encoder.train(was_training)
    return torch.cat(out)



_TEACHER_VECTORS: dict[tuple[Any, ...], torch.Tensor] = {}


def teacher_vectors(teacher: Any, texts: list[str], cfg: EvalConfig, device: torch.device | str) -> torch.Tensor:
    """The teacher's sentence vectors of `texts`, computed once per process (every student is compared to them)."""
    key = (str(getattr(teacher, "source", id(teacher))), sha256_hex("\n".join(texts)),
           cfg.batch_size, cfg.fidelity_max_seq_length, str(device))
    if key not in _TEACHER_VECTORS:
        _TEACHER_VECTORS[key] = sentence_vectors(teacher.encoder, teacher.tokenizer, texts, cfg.batch_size,
                                                 cfg.fidelity_max_seq_length, device, teacher.pooling)
    return _TEACHER_VECTORS[key]
