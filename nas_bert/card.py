"""The model card (README.md) written into every exported student folder."""

from __future__ import annotations

import math
from typing import Any

from nas_bert.architecture import Architecture


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _extra_metrics(info: dict[str, Any]) -> str:
    """Rows for distillation and evaluation, when those stages have run."""
    m, d, rows = info["metrics"], info.get("distilled"), []
    if d:
        rows.append(f"| distilled | {d['steps']} steps, layer mapping {d['mapping']} |")
        rows.append(f"| held-out final-state MSE before / after distillation | {_fmt(d['final_loss_before'], '.5f')} / "
                    f"{_fmt(d['final_loss_after'], '.5f')} |")
    labels = {"eval_fidelity": "fidelity to the teacher (Spearman of pairwise cosine similarities)",
              "eval_accuracy": "downstream accuracy", "eval_teacher_accuracy": "teacher's accuracy (same protocol)",
              "eval_accuracy_ratio": "accuracy / teacher's", "eval_label_loyalty": "label loyalty",
              "eval_probability_loyalty": "probability loyalty (1 - Jensen-Shannon distance)"}
    task = f" ({m['eval_task']})" if "eval_task" in m else ""
    rows += [f"| {label}{task if k != 'eval_fidelity' else ''} | {_fmt(m[k], '.4f')} |"
             for k, label in labels.items() if m.get(k) is not None]
    return "\n".join(rows) + ("\n" if rows else "")


def model_card(info: dict[str, Any], arch: Architecture) -> str:
    """README.md: usage, the architecture per block and sublayer, latency beside the teacher's, metrics, command."""
    m, lat, t, ck = info["metrics"], info["latency"], info["teacher"], info["checkpoint"]
    cfg, sp, tms = lat["config"], lat["speedup"], _fmt(lat["teacher_torch_fp32"])
    emb = arch.embeddings
    rows = [f"| - | embeddings | {emb.width} | the teacher's (vocab {emb.vocab_size}) | {emb.params():,} |"]
    prev = arch.embeddings.width
    for i, b in enumerate(arch.blocks):
        rows.append(f"| {i} | projection | {prev} -> {b.hidden} | linear | {prev * b.hidden + b.hidden:,} |")
        rows += [f"| {i} | {j} | {b.hidden} | {op} | {op.params(b.hidden):,} |" for j, op in enumerate(b.ops)]
        prev = b.hidden
    runtimes = "\n".join(f"| {label} | {_fmt(lat[k])} | {tms} | {_fmt(sp[k], '.2f')}x |" for label, k in
                         (("PyTorch fp32", "torch_fp32"), ("ONNX fp32", "onnx_fp32"), ("ONNX int8", "onnx_int8")))
    table = "\n".join(rows)
    stale = "" if ck["scored_with_sha256"] == ck["sha256"] else (
        f"; the search scored it with checkpoint sha256 `{ck['scored_with_sha256']}`, since pruned")
    return f"""---
library_name: transformers
pipeline_tag: feature-extraction
tags: [nas-bert, bert, onnx]
---
# {info["name"]}

A BERT student found by nas-bert in study `{info["study"]}` (trial {info["trial"]} of the \
{_fmt(info["budget_ms"], "g")} ms search), extracted from the trained supernet on the embeddings of the teacher \
`{t["name"]}`{" and distilled from it" if info.get("distilled") else ""}. It returns `last_hidden_state` of shape (batch, sequence, {arch.output or arch.blocks[-1].hidden}).

## Usage

```python
from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{info["name"]}", trust_remote_code=True)
model = AutoModel.from_pretrained("{info["name"]}", trust_remote_code=True)
hidden = model(**tokenizer(["a sentence"], return_tensors="pt")).last_hidden_state
```

ONNX: `onnx/model.onnx` (fp32) and `onnx/model.int8.onnx` (dynamic int8 weights) take `input_ids` and \
`attention_mask` of any batch size and sequence length and return `last_hidden_state`.

## Architecture

| block | sublayer | width | operator | parameters |
|---|---|---|---|---|
{table}

Parameters: **{info["params"]:,}** (teacher {t["params"]:,}). FLOPs per sequence of {cfg["seq_len"]} tokens: \
**{info["flops"]:,}**. Weights: {info["size_mb"]:.2f} MB.

## Latency

Measured on {lat["machine"]}, batch {cfg["batch_size"]}, sequence length {cfg["seq_len"]}, {cfg["threads"]} \
threads. The student's three runtimes and the teacher were timed in interleaved rounds, as the latency table \
is (disturbed blocks dropped, 10th percentile of the rest); the prediction is the search's latency model.

| runtime | student ms | teacher ms (PyTorch fp32) | speed-up |
|---|---|---|---|
| predicted (latency model) | {_fmt(info["predicted_ms"])} | | |
{runtimes}

## Metrics

| metric | value |
|---|---|
| approximate loss (sum of block MSE) | {_fmt(m["approx_loss"], ".5f")} |
| rescored loss (end-to-end MSE vs teacher) | {_fmt(m["rescored_loss"], ".5f")} |
| ONNX fp32 max abs diff vs PyTorch | {m["onnx_max_abs_diff"]:.2e} |
| ONNX int8 relative error vs PyTorch (norm of difference / norm) | {m["int8_rel_error"]:.3f} |
| ONNX int8 mean cosine to PyTorch per token | {m["int8_mean_cosine"]:.4f} |
{_extra_metrics(info)}
## Provenance

- architecture hash `{info["hash"]}`; the full architecture JSON is in `nas_bert.json`
- supernet checkpoint `{ck["path"]}` (step {ck["step"]}, sha256 `{ck["sha256"]}`){stale}

Made with:

```
{info["command"]}
```
"""
