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
