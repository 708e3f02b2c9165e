"""Stage 1 benchmark: training throughput vs the teacher, packing, and what the supernet learned.

    python benchmarks/bench_supernet.py --config studies/demo.yaml

Prints three tables:
1. tokens/s of one supernet training step (teacher forward + sampled paths forward/backward +
   AdamW) beside the teacher's forward-only tokens/s, same batch and sequence length, measured
   interleaved in one run; the ratio (target >= 0.33: a step costs at most 3 teacher forwards);
2. the share of padding tokens per batch, packed vs one gloss per row;
3. per-block validation MSE of the largest, smallest and a few random sub-architectures at step 0
   and at the study's latest checkpoint, and the Spearman rank correlation between a block
   sub-architecture's parameters and its loss over 20 random ones per block.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr
from torch.utils.benchmark import Timer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import cpu_name, table
from nas_bert.data import fixed_batches, load_corpus, make_collator, padding_share
from nas_bert.search import latest_checkpoint
from nas_bert.space import architecture as A
from nas_bert.store import Database
from nas_bert.study import CorpusConfig, load_study
from nas_bert.supernet import BlockwiseObjective, Supernet, ValidationCache, block_val_loss, build_supernet
from nas_bert.teacher import load_teacher


def make_train_step(net: Supernet, objective: BlockwiseObjective, batch: dict):
    """One full training step: teacher forward, sampled paths forward and backward, AdamW."""
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    step = [0]

    def train_step() -> None:
        loss, _ = objective.loss(net, batch, step[0])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step[0] += 1

    return train_step


def throughput(study, teacher, corpus, collator, batch_size: int, rounds: int, min_run_time: float) -> list[list[str]]:
    rows = []
    batch = collator([corpus["train"][i] for i in range(batch_size)])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    tokens = int(mask.sum())
    empty = ValidationCache([], [])
    every = study.cfg.supernet.sandwich_every
    variants = [("uniform", 1), ("sandwich", 1)] + ([("sandwich", every)] if every > 1 else [])
    for sampling, k in variants:
        net = build_supernet(study, teacher, seed=0, corpus=corpus).train()
        objective = BlockwiseObjective(teacher, study.space, sampling, 0, empty, 0, k)
        train_step = make_train_step(net, objective, batch)

        def teacher_forward() -> None:
            teacher.hidden_states(ids, mask)

        t_train, t_teacher = [], []  # a sandwich_every > 1 step is timed over many steps, so its mix shows
        threads = torch.get_num_threads()
        for _ in range(rounds):  # interleaved, so both see the same machine load
            t_teacher.append(Timer("f()", globals={"f": teacher_forward}, num_threads=threads)
                             .blocked_autorange(min_run_time=min_run_time).mean)
            t_train.append(Timer("f()", globals={"f": train_step}, num_threads=threads)
                           .blocked_autorange(min_run_time=min_run_time).mean)
        tr, te = statistics.median(t_train), statistics.median(t_teacher)
        label = sampling if k == 1 else f"{sampling}, extremes every {k} steps"
        rows.append([label, f"{tokens / te:,.0f}", f"{tokens / tr:,.0f}", f"{te / tr:.2f}", f"{tr / te:.2f}x"])
    return rows


def padding(study, teacher, batch_size: int) -> list[list[str]]:
    rows = []
    for pack in (True, False):
        cfg = CorpusConfig(**(study.cfg.corpus.model_dump() | {"pack": pack}))
        ds = load_corpus(cfg, teacher.tokenizer)["validation"]
        collator = make_collator(teacher.tokenizer, cfg)
        shares = [padding_share(b) for b in fixed_batches(ds, collator, 8, batch_size, seed=0)]
        rows.append(["packed" if pack else "one gloss per row", f"{statistics.mean(shares):.3f}"])
    return rows


def quality(study, teacher, corpus, collator, n_random: int) -> tuple[list[list[str]], list[list[str]], int]:
    cfg = study.cfg.supernet
    cache = ValidationCache.build(teacher, corpus["validation"], collator, cfg.val_batches, cfg.batch_size,
                                  study.space.blocks, torch.device("cpu"))
    db = Database(study.db_url)
    ckpt = latest_checkpoint(db, study)
    trained = Supernet(study.space, teacher.hidden_size, float(teacher.config.layer_norm_eps))
    trained.load_state_dict(torch.load(ckpt.path, map_location="cpu", weights_only=False)["model"])
    nets = {"step 0": build_supernet(study, teacher, cfg.seed, corpus), f"step {ckpt.step}": trained.eval()}
    rng = random.Random(7)
    named = {"largest": A.largest_block(study.space), "smallest": A.smallest_block(study.space)}
    named |= {f"random {i}": A.sample_block(study.space, rng) for i in range(3)}
    loss_rows = []
    for label, net in nets.items():
        net.eval()
        for name, block in named.items():
            losses = [block_val_loss(net, b, block, cache) for b in range(study.space.blocks)]
            loss_rows.append([label, name, f"{block.params():,}"] + [f"{x:.4f}" for x in losses])
    corr_rows = []
    for b in range(study.space.blocks):
        blocks = [A.sample_block(study.space, rng) for _ in range(n_random)]
        params = [blk.params() for blk in blocks]
        losses = [block_val_loss(trained, b, blk, cache) for blk in blocks]
        rho = spearmanr(params, losses).statistic
        big, small = (block_val_loss(trained, b, named[k], cache) for k in ("largest", "smallest"))
        corr_rows.append([str(b), f"{rho:.2f}", f"{big:.4f}", f"{small:.4f}", "yes" if big < small else "NO"])
    return loss_rows, corr_rows, ckpt.step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="studies/demo.yaml")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-run-time", type=float, default=2.0)
    ap.add_argument("--random", type=int, default=20, help="random block sub-architectures per block")
    ap.add_argument("--skip-quality", action="store_true", help="only throughput and padding")
    args = ap.parse_args()
    t0 = time.time()
    study = load_study(args.config)
    teacher = load_teacher(study.cfg.teacher)
    corpus = load_corpus(study.cfg.corpus, teacher.tokenizer)
    collator = make_collator(teacher.tokenizer, study.cfg.corpus)
    seq = study.cfg.corpus.max_seq_length
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"teacher {study.cfg.teacher}, space {study.space.name}, batch {args.batch_size} x {seq} tokens\n")
    print("1. training throughput vs teacher forward (tokens/s, mean step time, median over interleaved rounds)")
    print(table(["sampling", "teacher fwd tok/s", "train step tok/s", "ratio", "step / teacher fwd"],
                throughput(study, teacher, corpus, collator, args.batch_size, args.rounds, args.min_run_time)))
    print("\n2. padding share per batch (validation, 8 batches)")
    print(table(["batching", "padding share"], padding(study, teacher, args.batch_size)))
    if not args.skip_quality:
        loss_rows, corr_rows, step = quality(study, teacher, corpus, collator, args.random)
        blocks = [f"block {b} MSE" for b in range(study.space.blocks)]
        print("\n3a. per-block validation MSE (block sub-architecture repeated in every block)")
        print(table(["supernet", "sub-architecture", "block params", *blocks], loss_rows))
        print(f"\n3b. after {step} steps: capacity vs loss over {args.random} random block sub-architectures")
        print(table(["block", "Spearman(params, loss)", "largest MSE", "smallest MSE", "largest < smallest"], corr_rows))
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
