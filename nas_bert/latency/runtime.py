"""The runtime a budget is for: PyTorch fp32 (the default), ONNX Runtime fp32, or ONNX Runtime with dynamic int8
weights (`latency.runtime`).

Every timing of the latency model goes through `runtime_job`: a table entry, a calibration student, a finalist,
the teacher. Under ONNX Runtime each is exported as the graph a deployed student runs (static shapes: the
timing's batch and sequence length), quantised the way `nas-bert export` quantises (dynamic, per-channel int8
weights) where the runtime is int8, and loaded into a CPU session with `latency.threads` intra-op threads.
So the table, its calibration, the finalists' times and the export's verdict are all on the runtime the budget
names; the search itself is unchanged.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas_bert.study import RUNTIME_LABEL, RUNTIME_VARIANT, LatencyConfig

__all__ = ["RUNTIME_LABEL", "RUNTIME_VARIANT", "quantize_int8", "runtime_call", "runtime_job", "session"]

Job = tuple[str, dict[str, Any]]  # a Timer statement and its globals



def session(path: Path | bytes, threads: int) -> Any:
    """An ONNX Runtime CPU session with `threads` intra-op threads (one inter-op thread), quiet."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def quantize_int8(fp32: Path, int8: Path) -> None:
    """Dynamic int8 quantisation with per-channel weight scales (BERT's outlier rows make one scale per tensor
    lose most of the rest): the export's and the int8 runtime's one recipe."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # quantize_dynamic logs a pre-processing hint on the root logger
    try:
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.level = level


class _FirstOutput(nn.Module):
    """A module whose output is a model output or a tuple, reduced to its first tensor (one graph output)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = self.inner(*args)
        if isinstance(out, torch.Tensor):
            return out
        return out[0] if isinstance(out, (tuple, list)) else next(iter(out.values()))


def onnx_session(module: nn.Module, args: tuple[torch.Tensor, ...], runtime: str, threads: int) -> Any:
    """`module(*args)` as an ONNX Runtime session (int8 weights for "onnxruntime-int8"); inputs in0, in1, ..."""
    names = [f"in{i}" for i in range(len(args))]
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "m.onnx"
        # static shapes (the timing's): the TorchScript exporter, a fraction of a second per table entry
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(_FirstOutput(module).eval(), args, str(fp32), dynamo=False, input_names=names,
                              output_names=["out"])
        path = fp32
        if runtime == "onnxruntime-int8":
            path = Path(tmp) / "m.int8.onnx"
            quantize_int8(fp32, path)
        return session(path.read_bytes(), threads)


def runtime_job(module: nn.Module, args: tuple[torch.Tensor, ...], cfg: LatencyConfig, torch_job: Job | None = None
                ) -> Job:
    """The timing job of `module(*args)` on the study's runtime: under PyTorch `torch_job` (the statement a
    caller has always timed) or the module's call, else the module's ONNX Runtime session fed the same inputs."""
    if cfg.runtime == "torch":
        return torch_job or ("m(*args)", {"m": module, "args": args})
    sess = onnx_session(module.cpu(), tuple(a.cpu() for a in args), cfg.runtime, cfg.threads)
    graph_inputs = {i.name for i in sess.get_inputs()}  # the exporter drops inputs the graph does not read
    feeds = {f"in{i}": a.cpu().numpy() for i, a in enumerate(args) if f"in{i}" in graph_inputs}
    return "s.run(None, feeds)", {"s": sess, "feeds": feeds}


def runtime_call(module: nn.Module, args: tuple[torch.Tensor, ...], cfg: LatencyConfig) -> Any:
    """`runtime_job` as a plain callable (for `measure_callables`)."""
    stmt, env = runtime_job(module, args, cfg)
    if stmt == "m(*args)":
        return lambda: module(*args)
    return lambda: env["s"].run(None, env["feeds"])
