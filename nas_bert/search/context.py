"""What one search needs in memory: the teacher, the trained supernet's block scorer, the latency model
and the validation batches that rescore the best.
"""

from __future__ import annotations

from dataclasses import dataclass

from nas_bert.data import corpus_identity, load_corpus, make_collator
from nas_bert.latency import LatencyModel, ensure_latency_model
from nas_bert.search.scoring import BlockScorer, fidelity_proxy, rescore
from nas_bert.search.storage import load_trained
from nas_bert.space import Architecture
from nas_bert.store import Database, fingerprint
from nas_bert.study import Study
from nas_bert.supernet import ValidationCache
from nas_bert.teacher import Teacher


@dataclass
class SearchContext:
    """A budget's search inputs, loaded once per process."""

    study: Study
    db: Database
    teacher: Teacher
    latency: LatencyModel
    scorer: BlockScorer
    checkpoint_sha: str
    rescore_cache: ValidationCache | None = None
    proxy: str = "blocks"  # what a trial is scored by (`proxy_of`)

    def score(self, arch: Architecture) -> float:
        """A trial's proxy loss: NAS-BERT's sum of block losses, or 1 - the extracted student's zero-step fidelity
        (after a linear readout with proxy "readout"; what that adds over the embeddings alone with "gain")."""
        if self.proxy == "blocks":
            return self.scorer.approx_loss(arch)
        return fidelity_proxy(self.scorer.supernet, arch, self.scorer.cache, self.teacher, self.proxy)

    def rescore(self, arch: Architecture) -> float:
        """The same judged on more text: the chained student's end-to-end loss, or its fidelity proxy."""
        assert self.rescore_cache is not None
        if self.proxy == "blocks":
            return rescore(self.scorer.supernet, arch, self.rescore_cache)
        return fidelity_proxy(self.scorer.supernet, arch, self.rescore_cache, self.teacher, self.proxy)


READOUT_MIN_TEXTS = 64  # the fewest scored texts a readout proxy (readout, gain) fits its linear map on


def proxy_of(study: Study) -> str:
    """The study's trial score: `search.proxy`, where auto is, in a space made from the teacher, the readout's gain
    (the best ranker of the finalists: BENCHMARKS.md, bench_proxy.py) where the scored texts are enough to fit its
    linear map, else the zero-step fidelity; NAS-BERT's block losses in a space file's."""
    cfg = study.cfg.search
    if cfg.proxy != "auto":
        return cfg.proxy
    if not study.space.layer_slots:
        return "blocks"
    scored = min(cfg.score_batches, cfg.rescore_batches) * cfg.batch_size  # what the readout is fitted on
    return "gain" if scored >= READOUT_MIN_TEXTS else "fidelity"


def proxy_identity(study: Study) -> str:
    """`search.proxy` as the stages' identities hold it: as written, but "auto:gain" where auto resolves to the gain
    (before, auto was always the zero-step fidelity in a space made from the teacher: such a study's search, made by
    the other proxy, is redone; one whose auto still means the fidelity keeps its identity)."""
    proxy = study.cfg.search.proxy
    return "auto:gain" if proxy == "auto" and proxy_of(study) == "gain" else proxy


# what a trial's loss and its rescoring are, per proxy: for plot axes and model cards
PROXY_LABELS = {
    "blocks": ("approximate loss (sum of block MSE)", "rescored loss (end-to-end MSE vs teacher)"),
    "fidelity": ("proxy loss (1 - zero-step fidelity to the teacher)", "rescored proxy loss (the same on more texts)"),
    "readout": ("proxy loss (1 - zero-step fidelity after a linear readout)",
                "rescored proxy loss (the same on more texts)"),
    "gain": ("proxy loss (1 - the readout's gain over the embeddings alone)",
             "rescored proxy loss (the same on more texts)"),
}


def open_context(study: Study, progress: bool = True) -> SearchContext:
    """Load the study's latest supernet, teacher, latency model and validation batches."""
    device = study.device()
    db = Database(study.db_url)
    ckpt, teacher, supernet = load_trained(db, study, device)
    latency = ensure_latency_model(db, study.space, teacher.embeddings_spec(), study.cfg.latency, progress=progress)
    cfg = study.cfg.search
    corpus = load_corpus(study.cfg.corpus, teacher.tokenizer)
    collator = make_collator(teacher.tokenizer, study.cfg.corpus)
    cache = ValidationCache.build(teacher, corpus["validation"], collator, cfg.score_batches, cfg.batch_size,
                                  study.space.blocks, device)
    # block scores are memoised under the checkpoint and the protocol that scored them
    proxy = proxy_of(study)
    score_key = fingerprint(ckpt.sha256, cfg.score_batches, cfg.batch_size, corpus_identity(study.cfg.corpus),
                            *([proxy] if proxy != "blocks" else []))
    scorer = BlockScorer(supernet, cache, db, score_key)
    scorer.load_memo()
    ctx = SearchContext(study, db, teacher, latency, scorer, ckpt.sha256, proxy=proxy)
    ctx.rescore_cache = ValidationCache.build(teacher, corpus["validation"], collator, cfg.rescore_batches,
                                              cfg.batch_size, study.space.blocks, device)
    return ctx
