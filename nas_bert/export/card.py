"""The model card (README.md) written into every exported student folder."""

from __future__ import annotations

import math
import re
from typing import Any

from nas_bert.search import PROXY_LABELS
from nas_bert.space import Architecture, output_params, transition_params
from nas_bert.study import RUNTIME_LABEL, RUNTIME_VARIANT


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
              "eval_ood_fidelity": "fidelity out of domain (Linux man pages' prose, never trained or chosen on)",
              "eval_cosine": "mean cosine to the teacher's sentence embedding",
              "eval_ood_cosine": "mean cosine to the teacher's sentence embedding, out of domain",
              "eval_accuracy": "downstream accuracy", "eval_teacher_accuracy": "teacher's accuracy (same protocol)",
              "eval_accuracy_ratio": "accuracy / teacher's", "eval_label_loyalty": "label loyalty",
              "eval_probability_loyalty": "probability loyalty (1 - Jensen-Shannon distance)"}
    if m.get("eval_ood"):  # the study's own out-of-domain texts: the headline figure is its first set's
        first = next(iter(m["eval_ood"]))
        labels["eval_ood_fidelity"] = f"fidelity out of domain ({first}, never trained or chosen on)"
        labels["eval_ood_cosine"] = f"mean cosine to the teacher's sentence embedding, out of domain ({first})"
    task = f" ({m['eval_task']})" if "eval_task" in m else ""
    rows += [f"| {label}{task if 'fidelity' not in k and 'cosine' not in k else ''} | {_fmt(m[k], '.4f')} |"
             for k, label in labels.items() if m.get(k) is not None]
    if m.get("eval_accuracy_ratio_low") is not None:
        rows.append(f"| accuracy / teacher's: paired bootstrap 90% interval over the test examples (one fine-tuning "
                    f"seed) | {_fmt(m['eval_accuracy_ratio_low'], '.4f')} to {_fmt(m['eval_accuracy_ratio_high'], '.4f')} |")
    # the study's own data, each set by name
    for name, t in (m.get("eval_tasks") or {}).items():
        rows.append(f"| task {name}: accuracy (teacher's; ratio; label loyalty) | {_fmt(t.get('accuracy'), '.4f')} "
                    f"({_fmt(t.get('teacher_accuracy'), '.4f')}; {_fmt(t.get('accuracy_ratio'), '.4f')}; "
                    f"{_fmt(t.get('label_loyalty'), '.4f')}) |")
    for name, p in (m.get("eval_pairs") or {}).items():
        rows.append(f"| pairs {name}: Spearman of cosine similarities with the gold scores (teacher's) | "
                    f"{_fmt(p.get('spearman'), '.4f')} ({_fmt(p.get('teacher_spearman'), '.4f')}) |")
    for name, o in (m.get("eval_ood") or {}).items():
        rows.append(f"| out of domain {name}: fidelity to the teacher | {_fmt(o.get('fidelity'), '.4f')} |")
    return "\n".join(rows) + ("\n" if rows else "")


def _origin(info: dict[str, Any]) -> str:
    """Where the student comes from, said plainly when a hand-designed student won its budget."""
    fin = info.get("finalist") or {}
    plain = {"truncated": "the teacher's own first layers (a hand-designed student)",
             "uniform": "the teacher at a uniform smaller width, its units ranked by importance (a hand-designed student)",
             "pruned": "the teacher's own first layers with their least important feed-forward neurons pruned "
                       "(a hand-designed student)",
             "spread": "evenly spread layers of the teacher (a hand-designed student)",
             "spread-pruned": "evenly spread layers of the teacher with their least important feed-forward neurons "
                              "pruned (a hand-designed student)",
             "minitron": "the teacher's first layers at a smaller width, heads, neurons and dimensions pruned by "
                         "importance together (a hand-designed, Minitron-style student)"}
    if info.get("origin", "search") != "search":
        if info.get("tied_with"):  # search.choose_protocol.ties: recipe
            return (f"**A hand-designed student kept on a tie**: this model is {plain[info['origin']]}, distilled; the "
                    f"best searched students of its latency ({', '.join(info['tied_with'])}) did not beat it beyond "
                    f"noise on {_by(info, fin)} (after the finalists' short distillation), and a recipe, free and fully "
                    "known, keeps a tie.\n\n")
        return (f"**A hand-designed student won this budget's finalists**: this model is {plain[info['origin']]}, "
                f"distilled; it beat every searched student of its latency on {_by(info, fin)} (after the "
                f"finalists' short distillation).\n\n")
    if fin and (m := re.fullmatch(r"teacher-layers-(\d+)(?:-w(\d+))?(?:-f(\d+))?", str(fin.get("name", "")))):
        k, w, r = m.groups()
        shape = f"first {k} layer(s)" + (f", cut to width {w} (their most important heads, neurons and dimensions)"
                                          if w else "") + (f", their feed-forward pruned to {r} x width neurons "
                                                           "(the most important ones)" if r else "")
        return (f"**This student is the teacher's own {shape}**, the search's seed student of that shape, "
                f"distilled: among the {_fmt(info.get('budget_ms'), 'g')} ms finalists (searched and hand-designed "
                f"students after the same short distillation) it ranked first on {_by(info, fin)}.\n\n")
    if fin:
        return (f"Chosen among the {_fmt(info.get('budget_ms'), 'g')} ms finalists (searched and hand-designed students "
                f"after the same short distillation) by {_by(info, fin)}.\n\n")
    return ""


def _by(info: dict[str, Any], fin: dict[str, Any]) -> str:
    """What ranked the finalists (`search.choose_by`; older exports: the fidelity) with the chosen one's figures."""
    probe = fin.get("probe") or {}
    return " plus ".join(
        (f"{w:g} x " if w != 1 else "") + (f"held-out fidelity {_fmt(fin.get('fidelity'))}" if k == "fidelity" else
                                           f"{k} accuracy {_fmt(probe.get(k))}")
        for k, w in (info.get("chosen_by") or {"fidelity": 1.0}).items() if w)


def _made(info: dict[str, Any]) -> str:
    t, distilled = info["teacher"]["name"], " and distilled from it" if info.get("distilled") else ""
    if info.get("origin", "search") != "search":
        return (f"A BERT student made by nas-bert in study `{info['study']}` for the {_fmt(info['budget_ms'], 'g')} ms "
                f"budget, copied from the teacher `{t}`{distilled}.")
    b = _fmt(info["budget_ms"], "g")
    fin = info.get("finalist") or {}
    recipe = fin.get("beside_recipe")  # a hand-designed finalist's own point grown or shrunk, a finalist beside it
    found = (f"trial {info['trial']} of the {b} ms search" if info.get("trial") is not None else
             f"`{fin.get('name', '?')}`: the hand-designed `{recipe}` " + (
                 "made larger into the latency it left unused" if fin.get("grown_of") else
                 "one step smaller, as the recipe was judged within the latency model's error of the budget")
             + ", a searched finalist beside it" if recipe else
             f"`{fin.get('name', '?')}`: a student of the {b} ms search made larger, timed in its place when it "
             "measured well under the budget" if fin.get("grown_of") else
             f"`{fin.get('name', '?')}`: a student of the {b} ms search one step smaller, "
             "timed in its place when it measured over the budget")
    return (f"A BERT student found by nas-bert in study `{info['study']}` ({found}), extracted from the trained "
            f"supernet on the embeddings of the teacher `{t}`{distilled}.")


def _usage(info: dict[str, Any]) -> str:
    auto = f"""```python
from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{info["name"]}", trust_remote_code=True)
model = AutoModel.from_pretrained("{info["name"]}", trust_remote_code=True)
hidden = model(**tokenizer(["a sentence"], return_tensors="pt")).last_hidden_state
```"""
    if not info.get("sentence_transformers"):
        return auto
    return f"""Use it as its teacher is used, with sentence-transformers (same pooling and normalisation):

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{info["name"]}", trust_remote_code=True)
embeddings = model.encode(["a sentence", "another sentence"])
```

or, for token states, with transformers alone:

{auto}"""


def _rule(lat: dict[str, Any]) -> str:
    """How the export judged the student's time against its budget, in words."""
    if lat.get("teacher_ratio") is not None:
        return (f"{lat['teacher_ratio']:.3f}x of the teacher timed beside it, against a budget of {lat['budget_x']:g}x of "
                "the teacher")
    return ("at the host's speed when the latency model was fitted, as far as the reference student and this student's "
            "own factor agree")


def _verdict(lat: dict[str, Any], judged: float, runtime: str) -> str:
    """The card's paragraph on how the budget judged the measured time."""
    if lat.get("teacher_ratio") is not None:
        return (f"The budget is {lat['budget_x']:g}x of the teacher's latency: on {RUNTIME_LABEL[runtime]}, the runtime "
                f"it is for, the student took {lat['teacher_ratio']:.3f}x of the teacher's layers timed beside it (as when the "
                f"budget was set: the same layers as a student), so the budget "
                f"judges {_fmt(judged)} ms (that fraction of the teacher's time when the latency model was fitted). No "
                "estimate of the host's drift enters: both were timed in the same interleaved rounds.")
    return (f"The host ran {_fmt(lat.get('drift') or 1.0, '.2f')}x as long as when the latency model was fitted (its "
            "reference student, the space's largest, was timed beside these) and, by the calibration refitted in this "
            f"run, {_fmt(lat.get('speed'), '.2f')}x as long for this student: a shared machine drifts, and times taken "
            f"minutes apart differ by that much. The budget judges {_fmt(judged)} ms for {RUNTIME_LABEL[runtime]}, the "
            "runtime it is for: the time measured at the fitted speed, as far as the two factors agree (divided by the "
            "lesser of them: a faster host tightens the verdict, a slower one loosens it only where both say so).")


def model_card(info: dict[str, Any], arch: Architecture) -> str:
    """README.md: usage, the architecture per block and sublayer, latency beside the teacher's, metrics, command."""
    m, lat, t, ck = info["metrics"], info["latency"], info["teacher"], info["checkpoint"]
    cfg, sp, tms = lat["config"], lat["speedup"], _fmt(lat["teacher_torch_fp32"])
    proxy = PROXY_LABELS[info.get("proxy", "blocks")]  # what the search scored it by (older exports: blocks)
    emb = arch.embeddings
    rows = [f"| - | embeddings | {emb.width} | the teacher's (vocab {emb.vocab_size}) | {emb.params():,} |"]
    prev = arch.embeddings.width
    for i, b in enumerate(arch.blocks):
        if b.hidden != prev:
            kind = "leading dimensions" if b.hidden < prev else "linear prediction of the added dimensions"
            rows.append(f"| {i} | into the block | {prev} -> {b.hidden} | {kind} | {transition_params(prev, b.hidden):,} |")
        rows += [f"| {i} | {j} | {b.hidden} | {op} | {op.params(b.hidden):,} |" for j, op in enumerate(b.ops)]
        prev = b.hidden
    if arch.output:
        kind = "reordering" if prev == arch.output else "linear"
        rows.append(f"| - | output | {prev} -> {arch.output} | {kind} | {output_params(prev, arch.output):,} |")
    runtimes = "\n".join(f"| {label} | {_fmt(lat[k])} | {tms} | {_fmt(sp[k], '.2f')}x |" for label, k in
                         (("PyTorch fp32", "torch_fp32"), ("ONNX fp32", "onnx_fp32"), ("ONNX int8", "onnx_int8")))
    table = "\n".join(rows)
    from nas_bert.choose import judged_ms  # the budget's one rule

    drift, speed = lat.get("drift") or 1.0, lat.get("speed")
    runtime = cfg.get("runtime", "torch")  # the runtime the budget is for
    judged = lat.get("judged_ms") or judged_ms(lat[RUNTIME_VARIANT[runtime]], drift, speed)
    finalist = info.get("finalist") or {}
    over = (f"**Over budget when measured**: {_fmt(lat[RUNTIME_VARIANT[runtime]])} ms ({RUNTIME_LABEL[runtime]}), {_fmt(judged)} "
            f"ms as the budget judges it ({_rule(lat)}), against the {_fmt(info['budget_ms'], 'g')} ms budget "
            f"on this machine (at the choice, timed beside its competitors, it took "
            f"{_fmt(finalist.get('measured_ms'))} ms, judged {_fmt(finalist.get('judged_ms'))} ms).\n\n"
            if info.get("over_budget") else "")
    stale = "" if ck["scored_with_sha256"] == ck["sha256"] else (
        f"; the search scored it with checkpoint sha256 `{ck['scored_with_sha256']}`, since pruned")
    return f"""---
library_name: transformers
pipeline_tag: feature-extraction
tags: [nas-bert, bert, onnx]
---
# {info["name"]}

{_made(info)} It returns `last_hidden_state` of shape (batch, sequence, {arch.output or arch.blocks[-1].hidden}).

{_origin(info)}{over}## Usage

{_usage(info)}

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
is (disturbed blocks dropped, 10th percentile of the rest). The first prediction is the search's latency \
model (the host's speed when it was fitted); the second is the same model with its calibration refitted on \
its calibration students timed in this run (the host's speed now; timed for a budget in ms only).

| runtime | student ms | teacher ms (PyTorch fp32) | speed-up |
|---|---|---|---|
| predicted (latency model) | {_fmt(info["predicted_ms"])} | | |
| predicted (refitted in this run) | {_fmt(info.get("predicted_now_ms"))} | | |
{runtimes}

{_verdict(lat, judged, runtime)}

## Metrics

| metric | value |
|---|---|
| {proxy[0]} | {_fmt(m["approx_loss"], ".5f")} |
| {proxy[1]} | {_fmt(m["rescored_loss"], ".5f")} |
| ONNX fp32 max abs diff vs PyTorch (largest output magnitude) | {m["onnx_max_abs_diff"]:.2e} ({_fmt(m.get("onnx_output_max_abs"), ".3g")}) |
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
