"""The one training loop that supernet training and distillation share: resumable checkpoints (each
verified against the sha256 written beside it), the best weights kept, the RNG state saved.
"""

from nas_bert.train.loop import (
    BestKeeper,
    CheckpointDir,
    atomic_torch_save,
    make_accelerator,
    rng_state,
    set_rng_state,
    train_loop,
)

__all__ = ["BestKeeper", "CheckpointDir", "atomic_torch_save", "make_accelerator", "rng_state", "set_rng_state", "train_loop"]
