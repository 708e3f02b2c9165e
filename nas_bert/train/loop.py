"""One training loop for supernet training and distillation; they differ only in the objective.

Resumable by construction: batches and sampled sub-architectures are pure functions of the step
(`StepBatcher`, per-step seeds), and a checkpoint holds the model, optimizer, scheduler, step and
every RNG state. So N steps in one go equal N/2 steps, a kill, and a resumed N/2.
Runs the same under `accelerate launch` with several processes: each rank takes its strided
share of the global batch and samples the same sub-architecture (same seed, same step).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from tqdm.auto import tqdm
from transformers import get_scheduler

from nas_bert.data import StepBatcher
from nas_bert.errors import NasBertError
from nas_bert.store import atomic_file, atomic_write_text, file_sha256, safe_torch_load
from nas_bert.study import TrainConfig

CKPT_RE = re.compile(r"step-(\d{7})\.pt$")


class Objective(Protocol):
    """What a stage trains for: a loss on one micro-batch and a validation report."""

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], micro_step: int) -> tuple[torch.Tensor, dict[str, float]]: ...

    def validate(self, model: torch.nn.Module) -> dict[str, Any]: ...


def sha_file(path: Path) -> Path:
    """Where a checkpoint's sha256 is kept beside it (`step-0000100.pt.sha256`)."""
    return path.with_name(path.name + ".sha256")


def atomic_torch_save(obj: Any, path: Path, keep_sha: bool = False) -> str:
    """Write to a temporary name, fsync, rename: a kill never leaves a half-written checkpoint. With
    `keep_sha`, its sha256 is written beside it first, so every checkpoint that exists can be verified."""
    with atomic_file(path) as f:
        torch.save(obj, f)
        f.flush()
        sha = file_sha256(f.name)  # the temporary file, whole: the sha is known before the rename
        if keep_sha:
            atomic_write_text(sha_file(path), sha)
    return sha


@dataclass
class CheckpointDir:
    """Checkpoints `step-0000100.pt` in one folder; the newest complete one is the resume point."""

    root: Path
    keep: int = 2

    def path(self, step: int) -> Path:
        return self.root / f"step-{step:07d}.pt"

    def steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.root.iterdir() if (m := CKPT_RE.search(p.name)))

    def best_path(self) -> Path:
        """Where a `BestKeeper` of this run keeps the best weights."""
        return self.root / "best.pt"

    def latest(self) -> Path | None:
        steps = self.steps()
        return self.path(steps[-1]) if steps else None

    def recorded_sha(self, path: Path) -> str | None:
        """The sha256 written beside a checkpoint when it was saved (None for one saved without it)."""
        f = sha_file(path)
        return f.read_text().strip() if f.is_file() else None

    def prune(self) -> list[int]:
        """Delete all but the newest `keep` checkpoints; returns the steps removed."""
        old = self.steps()[: -self.keep]
        for s in old:
            self.path(s).unlink(missing_ok=True)
            sha_file(self.path(s)).unlink(missing_ok=True)
        for stale in self.root.glob(".step-*.tmp-*"):  # left by a kill during a save
            if stale.is_file():
                stale.unlink(missing_ok=True)
        for orphan in self.root.glob("step-*.pt.sha256"):  # its checkpoint never made it (a kill before the rename)
            if not orphan.with_name(orphan.name.removesuffix(".sha256")).exists():
                orphan.unlink(missing_ok=True)
        return old


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain lists, so a checkpoint loads with `weights_only=True`."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # a CPU run on a GPU machine starts no CUDA context
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # resumed on a machine with fewer GPUs: those it has
        for i, gpu_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(gpu_state, i)


def make_accelerator(device: torch.device) -> Accelerator:
    """Accelerate's device for a study on `device`. Accelerate fixes one device per process: a study on another
    device than this process already trained on is refused in one line (it would train where its batches are not)."""
    # Only the sampled path gets gradients, so DDP must look for unused parameters.
    try:
        accelerator = Accelerator(cpu=device.type == "cpu",
                                  kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    except ValueError:  # Accelerate: "AcceleratorState has already been initialized..." (it ran on a GPU)
        accelerator = None
    if accelerator is None or accelerator.device.type != device.type:
        raise NasBertError(f"this process already trains on another device, the study asks for {device.type}: "
                           "run it in a new process (or give both studies the same device:)")
    return accelerator


def train_loop(
    *,
    model: torch.nn.Module,
    objective: Objective,
    dataset: Any,
    collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    cfg: TrainConfig,
    total_steps: int,
    ckpts: CheckpointDir | None,
    accelerator: Accelerator,
    meta: dict[str, Any],
    on_checkpoint: Callable[[int, Path, str, dict[str, Any]], None] | None = None,
    desc: str = "train",
    stop_after: int | None = None,
    progress: bool = True,
    keep_best: BestKeeper | None = None,
) -> dict[str, Any]:
    """Train `model` to `total_steps` updates, resuming from the newest checkpoint in `ckpts`.

    `meta` is stored in every checkpoint and must match on resume (e.g. the search space hash).
    `stop_after` ends this call after that many updates (tests use it to simulate a kill).
    With `ckpts=None` nothing is saved (the layer-mapping search's short proxy runs).
    With `keep_best` the model is validated before the first update too, and the keeper holds the
    weights of the best report so far (the start included). Returns the last validation report, with
    "best": {"step", "value"} when keeping the best.
    """
    if not any(p.requires_grad for p in model.parameters()):  # e.g. an empty student with frozen embeddings
        model.eval()
        report = {"step": total_steps, **objective.validate(model)}
        if keep_best is not None:
            keep_best.offer(model, {**report, "step": 0})
        return {**report, "best": keep_best.record()} if keep_best else report
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    scheduler = get_scheduler(cfg.schedule, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)
    start, report = 0, {}
    latest = ckpts.latest() if ckpts is not None else None
    if ckpts is not None and latest is not None:  # verified against the sha256 written beside it at saving
        state = safe_torch_load(latest, ckpts.recorded_sha(latest), what="checkpoint")
        for key, want in meta.items():
            if state["meta"].get(key) != want:
                raise NasBertError(
                    f"checkpoint {latest} was made with {key}={state['meta'].get(key)!r}, this study has {want!r}; "
                    f"move {ckpts.root} away to start afresh"
                )
        model.load_state_dict(state["model"])
        if "optimizer" in state:  # a supernet saved untrained (steps 0) has no optimizer state yet
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start, report = int(state["step"]), state.get("report", {})
        if keep_best is not None:
            keep_best.restore(state.get("best", {}))
    else:
        torch.manual_seed(cfg.seed)
        if keep_best is not None and keep_best.step < 0:  # the start is a candidate: training never ends below it
            model.eval()
            report = {"step": 0, **objective.validate(model)}
            keep_best.offer(model, report)
    if start >= total_steps:
        return {**report, "best": keep_best.record()} if keep_best else report

    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    batcher = StepBatcher(len(dataset), cfg.batch_size, cfg.seed, accelerator.process_index, accelerator.num_processes)
    end = total_steps if stop_after is None else min(total_steps, start + stop_after)
    bar = tqdm(range(start, end), initial=start, total=total_steps, desc=desc,
                disable=not (progress and accelerator.is_main_process))
    model.train()
    for step in bar:
        logs: dict[str, float] = {}
        for j in range(cfg.grad_accum):
            micro = step * cfg.grad_accum + j
            batch = collator([dataset[i] for i in batcher.indices(micro)])
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            sync = nullcontext() if j == cfg.grad_accum - 1 else accelerator.no_sync(model)
            with sync:
                loss, parts = objective.loss(model, batch, micro)
                accelerator.backward(loss / cfg.grad_accum)
            for k, v in parts.items():
                logs[k] = logs.get(k, 0.0) + v / cfg.grad_accum
        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()} | {"lr": f"{scheduler.get_last_lr()[0]:.2g}"})
        done = step + 1
        if done % cfg.eval_every == 0 or done == total_steps:
            model.eval()
            report = {"step": done, **objective.validate(raw_model)} if accelerator.is_main_process else {}
            if keep_best is not None and accelerator.is_main_process:
                keep_best.offer(raw_model, report)
            model.train()
        if ckpts is not None and (done % cfg.checkpoint_every == 0 or done == end):
            if accelerator.is_main_process:
                path = ckpts.path(done)
                sha = atomic_torch_save(
                    {
                        "model": raw_model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "step": done,
                        "rng": rng_state(),
                        "meta": meta,
                        "report": report,
                        "best": keep_best.record() if keep_best else {},
                    },
                    path,
                    keep_sha=True,
                )
                ckpts.prune()
                if on_checkpoint is not None:
                    on_checkpoint(done, path, sha, report)
            accelerator.wait_for_everyone()
    bar.close()
    return {**report, "best": keep_best.record()} if keep_best else report


@dataclass
class BestKeeper:
    """Keeps the weights of the best validation report so far (`key`, higher is better): in `path`
    (atomically; the record travels in every checkpoint, so a resumed run knows its best) or in memory."""

    key: str
    path: Path | None = None
    step: int = -1
    value: float = float("-inf")
    state: dict[str, Any] | None = None

    def offer(self, model: torch.nn.Module, report: dict[str, Any]) -> bool:
        """Keep the model's weights if `report[key]` beats the best so far (a NaN never does, except first)."""
        value = float(report.get(self.key, float("nan")))
        if self.step >= 0 and not value > self.value:
            return False
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if self.path is not None:
            atomic_torch_save(state, self.path)
        else:
            self.state = state
        self.step, self.value = int(report["step"]), value if not math.isnan(value) else float("-inf")
        return True

    def record(self) -> dict[str, Any]:
        return {"step": self.step, "value": self.value}

    def restore(self, record: dict[str, Any]) -> None:
        self.step, self.value = int(record.get("step", -1)), float(record.get("value", float("-inf")))

    def best_state(self) -> dict[str, Any] | None:
        if self.state is not None:
            return self.state
        if self.path is not None and self.path.is_file():
            return safe_torch_load(self.path, what="best weights")
        return None
