"""The search's "readout" proxy: the zero-step fidelity after a cross-fitted linear readout."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from conftest import FAST, ROOT

from nas_bert.errors import NasBertError
from nas_bert.evaluate import fidelity, readout_fidelity
from nas_bert.search.context import open_context
from nas_bert.search.scoring import with_output
from nas_bert.space import families
from nas_bert.study import load_study
from nas_bert.supernet import train_supernet


def _study(tmp_path, **search):
    data = yaml.safe_load((ROOT / "studies" / "tiny.yaml").read_text())
    data.update(copy.deepcopy(FAST))
    data["search_space"] = "auto"
    data["supernet"]["steps"] = 0
    data["search"].update(search)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data))
    return load_study(tmp_path / "tiny.yaml")


def _scored(tmp_path, proxy: str) -> tuple:
    """A tiny study searched by `proxy`, its search context, truncated-1 and the scored texts' pooled vectors:
    the extracted student's, the teacher's and its embeddings' alone."""
    study = _study(tmp_path, proxy=proxy, score_batches=8, rescore_batches=8, batch_size=8)
    train_supernet(study)
    ctx = open_context(study, progress=False)
    assert ctx.proxy == proxy
    arch = families(study.space, ctx.teacher.embeddings_spec())["truncated-1"][1]
    ours, theirs, embs = [], [], []
    with torch.no_grad():
        for batch, bounds in zip(ctx.scorer.cache.batches, ctx.scorer.cache.bounds, strict=True):
            mask = batch["attention_mask"]
            ours.append(ctx.teacher.embed(ctx.scorer.supernet.forward_student(
                bounds[0], with_output(ctx.scorer.supernet, arch), mask), mask))
            theirs.append(ctx.teacher.embed(bounds[-1], mask))
            embs.append(ctx.teacher.embed(bounds[0], mask))
    return ctx, arch, torch.cat(ours).float(), torch.cat(theirs).float(), torch.cat(embs).float()


def test_a_trial_is_scored_by_its_readout_fidelity_under_its_own_memo(tmp_path) -> None:
    ctx, arch, s, t, _ = _scored(tmp_path, "readout")
    assert ctx.score(arch) == pytest.approx(1 - readout_fidelity(s, t), abs=1e-6)
    assert ctx.score(arch) != pytest.approx(1 - fidelity(s, t), abs=1e-6)
    # its memoised scores are kept apart from the plain zero-step proxy's
    (tmp_path / "plain").mkdir()
    plain = _study(tmp_path / "plain", proxy="fidelity", score_batches=8, rescore_batches=8, batch_size=8)
    train_supernet(plain)
    assert open_context(plain, progress=False).scorer.checkpoint_sha != ctx.scorer.checkpoint_sha


def test_too_few_scored_texts_for_a_readout_is_a_one_line_error(tmp_path) -> None:
    with pytest.raises((NasBertError, ValueError), match="proxy readout fits a linear map on the scored texts, 4 here"):
        _study(tmp_path, proxy="readout")


def test_a_trial_is_scored_by_its_readout_gain_over_the_embeddings(tmp_path) -> None:
    """`search.proxy: gain`: 1 - what the extracted student's readout adds over the teacher's embeddings alone
    (pooled as the teacher pools), on the same scored texts; the readout's own text minimum holds for it too."""
    from nas_bert.evaluate import readout_gain

    ctx, arch, s, t, e = _scored(tmp_path, "gain")
    assert ctx.score(arch) == pytest.approx(1 - readout_gain(s, e, t), abs=1e-6)
    assert ctx.score(arch) != pytest.approx(1 - readout_fidelity(s, t), abs=1e-6)
    with pytest.raises((NasBertError, ValueError), match="proxy gain fits a linear map on the scored texts, 4 here"):
        _study(tmp_path, proxy="gain")


def test_auto_is_the_gain_where_the_scored_texts_fit_its_readout_and_only_such_a_study_searches_anew(tmp_path) -> None:
    """`search.proxy: auto` in a space made from the teacher: the readout's gain on 64 scored texts or more, the
    zero-step fidelity on fewer (where no readout can be fitted: no error, unlike an explicit gain); a space file's
    auto is the block losses. The stages' identity of an auto study changes only where auto now means the gain."""
    from nas_bert.pipeline import section_inputs
    from nas_bert.search import proxy_identity, proxy_of

    few = _study(tmp_path, proxy="auto")  # 4 texts scored
    assert (proxy_of(few), proxy_identity(few)) == ("fidelity", "auto")
    (tmp_path / "many").mkdir()
    many = _study(tmp_path / "many", proxy="auto", score_batches=8, rescore_batches=8, batch_size=8)
    assert (proxy_of(many), proxy_identity(many)) == ("gain", "auto:gain")
    (tmp_path / "fidelity").mkdir()
    fid = _study(tmp_path / "fidelity", proxy="fidelity", score_batches=8, rescore_batches=8, batch_size=8)
    assert proxy_of(fid) == "fidelity" and proxy_identity(fid) == "fidelity"
    keyed = section_inputs(many, ("search",), timed=False)["search"]
    (tmp_path / "gain").mkdir()
    gain = _study(tmp_path / "gain", proxy="gain", score_batches=8, rescore_batches=8, batch_size=8)
    assert keyed not in {section_inputs(s, ("search",), timed=False)["search"] for s in (fid, gain)}
    space_file = load_study(ROOT / "studies" / "tiny.yaml")  # the space its YAML names
    assert proxy_of(space_file) == "blocks" and proxy_identity(space_file) == "auto"
