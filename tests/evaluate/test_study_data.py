"""A study's own data: its tasks, sentence-pair sets and out-of-domain texts (`evaluate.tasks`, `.pairs`, `.ood`),
checked before any training, evaluated and reported by name; `search.choose_by` a task's accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from nas_bert.choose.finalists import criterion, halve, summarise
from nas_bert.choose.seeds import seed_interval
from nas_bert.cli.tables import evaluate_table, study_data_lines
from nas_bert.data.tasks import check_study_data, load_pairs
from nas_bert.errors import NasBertError
from nas_bert.evaluate import evaluation as ev
from nas_bert.evaluate import study_data as sd
from nas_bert.export.card import _extra_metrics
from nas_bert.model import NasBertConfig, NasBertModel
from nas_bert.pipeline import Runner, run_study, section_inputs
from nas_bert.space import sample
from nas_bert.store import Database, FinalistRow, StageRow, fingerprint
from nas_bert.study import EvalConfig, load_study

TINY = {"finetune_steps": 5, "fidelity_texts": 32, "max_train_examples": 64, "max_eval_examples": 32,
        "max_seq_length": 24, "batch_size": 8, "head_lr": 0.05}
WORDS = ["river", "stone", "music", "bread", "engine", "cloud", "garden", "letter", "window", "number"]


def _task_csv(path: Path, classes: list[str], n: int = 40, text: str = "text", label: str = "label") -> Path:
    rows = [f'"{WORDS[i % len(WORDS)]} {classes[i % len(classes)]} sample {i}",{classes[i % len(classes)]}'
            for i in range(n)]
    path.write_text(f"{text},{label}\n" + "\n".join(rows) + "\n")
    return path


def _pairs_jsonl(path: Path, score: object = None) -> Path:
    rows = [{"s1": f"{WORDS[i]} by the sea", "s2": f"{WORDS[(i * 3) % 10]} by the sea",
             "gold": score if score is not None else float(i % 5)} for i in range(10)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _data(tmp_path: Path) -> dict:
    """evaluate: keys of a study with two task files, a pair set and an out-of-domain file (relative paths)."""
    _task_csv(tmp_path / "topics.csv", ["a", "b", "c"], text="sentence", label="topic")
    _task_csv(tmp_path / "polarity.csv", ["pos", "neg"])
    _task_csv(tmp_path / "polarity_test.csv", ["pos", "neg"], n=12)
    _pairs_jsonl(tmp_path / "sts.jsonl")
    (tmp_path / "manuals.txt").write_text("\n".join(f"press the {w} key to continue" for w in WORDS) + "\n")
    return {
        "tasks": [{"name": "topics", "data": "topics.csv", "text_column": "sentence", "label_column": "topic",
                   "test_fraction": 0.25},
                  {"name": "polarity", "data": "polarity.csv", "test": "polarity_test.csv"}],
        "pairs": [{"name": "sts", "data": "sts.jsonl", "text1_column": "s1", "text2_column": "s2",
                   "score_column": "gold"}],
        "ood": [{"name": "manuals", "data": "manuals.txt"}],
    }


def _study(tiny_study_file: Path, evaluate: dict | None = None, **overrides: object):
    return load_study(tiny_study_file, overrides={**{f"evaluate.{k}": v for k, v in (evaluate or {}).items()},
                                                  **overrides})


# -- the keys -----------------------------------------------------------------------------------------
def test_absent_keys_leave_fingerprints_and_protocol_as_they_were(tiny_study_file):
    study = _study(tiny_study_file)
    cfg = study.cfg.model_dump(mode="json")
    for k in ("tasks", "pairs", "ood"):
        cfg["evaluate"].pop(k)
    cfg["search"].pop("choose_by"), cfg["search"].pop("choose_protocol")
    for k in ("budgets_ms", "budgets_x", "shrink_every", "shrink_min_uses", "local_moves", "reserve_grows", "screen_steps",
              "screen_pool", "grow_recipes"):
        cfg["search"].pop(k)
    cfg["latency"].pop("runtime"), cfg["latency"].pop("finalist_runs")
    sections = ("evaluate", "search", "latency")
    assert section_inputs(study, sections, False) == {k: fingerprint(cfg[k]) for k in sections}
    old = study.cfg.evaluate.model_dump(mode="json", exclude={"tasks", "pairs", "ood"})
    from nas_bert.store import json_hash

    assert ev.protocol_hash(study.cfg.evaluate, "wordnet") == json_hash({"config": old, "task": "wordnet"})


def test_reserve_grows_keys_the_finalists_alone_and_at_its_default_nothing(tiny_study_file):
    """search.reserve_grows, added later, is read by the finalists alone: at its default no stage's key changes
    (a study made before it goes on as it was); another value redoes the finalists, not the search."""
    from nas_bert.pipeline import Runner

    plain, other = _study(tiny_study_file), _study(tiny_study_file, **{"search.reserve_grows": 0})
    a, b = Runner(plain, echo=lambda _: None), Runner(other, echo=lambda _: None)
    assert "reserve_grows" not in a.inputs("finalists", "5ms") and a.inputs("search", "5ms") == b.inputs("search", "5ms")
    assert b.inputs("finalists", "5ms") == {**a.inputs("finalists", "5ms"), "reserve_grows": "0"}


def test_study_data_changes_the_evaluate_key_and_paths_are_read_against_the_study_file(tiny_study_file):
    plain, own = _study(tiny_study_file), _study(tiny_study_file, _data(tiny_study_file.parent))
    assert own.cfg.evaluate.tasks[1].test == str(tiny_study_file.parent / "polarity_test.csv")
    assert section_inputs(plain, ("evaluate",), False) != section_inputs(own, ("evaluate",), False)
    assert section_inputs(plain, ("search",), False) == section_inputs(own, ("search",), False)  # fidelity still
    chosen = _study(tiny_study_file, _data(tiny_study_file.parent), **{"search.choose_by": "task:topics"})
    assert section_inputs(plain, ("search",), False) != section_inputs(chosen, ("search",), False)


def test_choose_by_must_name_a_task_of_the_study(tiny_study_file):
    with pytest.raises(NasBertError, match="no task 'nope' in evaluate.tasks") as e:
        _study(tiny_study_file, _data(tiny_study_file.parent), **{"search.choose_by": "task:nope"})
    assert "\n" not in str(e.value)
    with pytest.raises(NasBertError, match="choose by 'fidelity', 'task:NAME' or 'finetune:NAME'"):
        _study(tiny_study_file, **{"search.choose_by": "accuracy"})
    mix = _study(tiny_study_file, _data(tiny_study_file.parent), **{"search.choose_by": {"fidelity": 0.5, "task:topics": 0.5}})
    assert mix.cfg.search.choose_by == {"fidelity": 0.5, "task:topics": 0.5}
    # fine-tuned accuracy: a task of the study, or the default WordNet supersenses
    tuned = _study(tiny_study_file, **{"search.choose_by": {"fidelity": 1.0, "finetune:wordnet": 1.0}})
    assert criterion(tuned) == {"fidelity": 1.0, "finetune:wordnet": 1.0}
    assert criterion(tuned, final=False) == {"fidelity": 1.0}  # halving before the last round: no fine-tuning
    assert criterion(_study(tiny_study_file, **{"search.choose_by": "finetune:wordnet"}), final=False) == {"fidelity": 1.0}
    with pytest.raises(NasBertError, match="no task 'nope' in evaluate.tasks"):
        _study(tiny_study_file, **{"search.choose_by": "finetune:nope"})
    with pytest.raises(NasBertError, match="no task 'wordnet' in evaluate.tasks"):  # a probe needs the study's task
        _study(tiny_study_file, **{"search.choose_by": "task:wordnet"})
    assert section_inputs(tuned, ("search",), False) != section_inputs(
        _study(tiny_study_file, **{"search.choose_by": {"fidelity": 1.0, "finetune:wordnet": 1.0},
                                   "evaluate.finetune_steps": 7}), ("search",), False)  # its protocol keys the choice


def test_choose_protocol_keys_the_choice_and_leaves_the_evaluation_its_own(tiny_study_file):
    """search.choose_protocol: the choice's fine-tuning is its own, so the evaluation's may change without redoing
    the search and the finalists, and a changed choice protocol redoes them."""
    from nas_bert.choose import finalists

    by = {"search.choose_by": {"fidelity": 1.0, "finetune:wordnet": 1.0}}
    tuned = _study(tiny_study_file, **by)
    steps = tuned.cfg.evaluate.finetune_steps
    pinned = _study(tiny_study_file, {"finetune_steps": steps + 90}, **by,
                    **{"search.choose_protocol": {"finetune_steps": steps}})
    assert finalists.choosing(pinned).finetune_steps == steps and pinned.cfg.evaluate.finetune_steps == steps + 90
    assert finalists.choosing(tuned) == tuned.cfg.evaluate  # none given: the evaluation's own
    assert section_inputs(pinned, ("search",), False) == section_inputs(tuned, ("search",), False)
    assert section_inputs(pinned, ("evaluate",), False) != section_inputs(tuned, ("evaluate",), False)
    assert finalists.protocol_hash(pinned, "ckpt") == finalists.protocol_hash(tuned, "ckpt")
    shorter = _study(tiny_study_file, **by, **{"search.choose_protocol": {"finetune_steps": 2}})
    assert section_inputs(shorter, ("search",), False) != section_inputs(tuned, ("search",), False)
    assert finalists.protocol_hash(shorter, "ckpt") != finalists.protocol_hash(tuned, "ckpt")
    with pytest.raises(NasBertError, match="finetune_steps"):
        _study(tiny_study_file, **{"search.choose_protocol": {"finetune_steps": 0}})
    # last_round: evaluate: the last round fine-tunes as the evaluation does; it keys the finalists, not the search
    last = _study(tiny_study_file, **by, **{"search.choose_protocol": {"finetune_steps": 2, "last_round": "evaluate"}})
    assert finalists.choosing(last).finetune_steps == 2 and finalists.choosing(last, last=True) == last.cfg.evaluate
    assert finalists.choosing(shorter, last=True).finetune_steps == 2  # none given: the choice's in every round
    assert section_inputs(last, ("search",), False) == section_inputs(shorter, ("search",), False)
    assert finalists.protocol_hash(last, "ckpt") == finalists.protocol_hash(shorter, "ckpt")  # its rows are kept
    keys = [Runner(s, echo=lambda _: None).inputs("finalists", "5ms", after=()) for s in (last, shorter)]
    assert keys[0] != keys[1] and "last_round" in keys[0] and "last_round" not in keys[1]
    assert Runner(last, echo=lambda _: None).inputs("search", "5ms", after=()) == Runner(
        shorter, echo=lambda _: None).inputs("search", "5ms", after=())
    with pytest.raises(NasBertError, match="last_round"):
        _study(tiny_study_file, **{"search.choose_protocol": {"last_round": "teacher"}})
    # ties: the choice's alone. "score" was the rule before it: the finalists' key as it was; the default
    # "recipe" keys them anew, so a study chosen before it chooses again (its rows kept: nothing is distilled again),
    # and anew since a recipe keeps a tie only off the budget's edge
    score = _study(tiny_study_file, **by, **{"search.choose_protocol": {"finetune_steps": 2, "ties": "score"}})
    keys = [Runner(s, echo=lambda _: None).inputs("finalists", "5ms", after=()) for s in (score, shorter)]
    assert keys[0] != keys[1] and keys[1]["ties"] == "recipe off the budget's edge" and "ties" not in keys[0]
    assert section_inputs(score, ("search",), False) == section_inputs(shorter, ("search",), False)
    assert finalists.protocol_hash(score, "ckpt") == finalists.protocol_hash(shorter, "ckpt")  # its rows are kept
    assert finalists.choosing(score) == finalists.choosing(shorter)
    with pytest.raises(NasBertError, match="ties"):
        _study(tiny_study_file, **{"search.choose_protocol": {"ties": "coin"}})


# -- bad data: one line, before any training ----------------------------------------------------------------
def _bad(tmp: Path, case: str) -> tuple[dict, list[str]]:
    """The evaluate: keys of one bad-data case, and what its one-line error must name."""
    data = _data(tmp)
    if case == "missing file":
        data["tasks"][0]["data"] = "nowhere.csv"
        return data, ["nowhere.csv", "not found", "fix the path"]
    if case == "missing column":
        data["tasks"][0]["label_column"] = "category"
        return data, ["topics.csv", "'category'", "['sentence', 'topic']", "label_column"]
    if case == "one class":
        _task_csv(tmp / "topics.csv", ["a"], text="sentence", label="topic")
        return data, ["topics.csv", "'topic'", "1 class", "two or more"]
    if case == "empty split":
        (tmp / "polarity_test.csv").write_text("text,label\n")
        return data, ["polarity_test.csv", "is empty", "give a file with rows"]
    if case == "score not numeric":
        _pairs_jsonl(tmp / "sts.jsonl", score="high")
        return data, ["sts.jsonl", "'gold'", "not numeric", "score_column"]
    if case == "ood column":
        (tmp / "manuals.jsonl").write_text('{"body": "a text"}\n')
        data["ood"][0]["data"] = "manuals.jsonl"
        return data, ["manuals.jsonl", "'text'", "['body']", "text_column"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing file", "missing column", "one class", "empty split", "score not numeric",
                                  "ood column"])
def test_bad_data_is_one_line_naming_file_column_and_fix(tiny_study_file, case):
    data, names = _bad(tiny_study_file.parent, case)
    study = _study(tiny_study_file, data)
    with pytest.raises(NasBertError) as e:
        check_study_data(study.cfg.evaluate)
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in names), msg


def test_run_refuses_bad_data_before_any_stage(tiny_study_file):
    data, _ = _bad(tiny_study_file.parent, "missing column")
    study = _study(tiny_study_file, data, **{"search.budgets_ms": [5.0]})
    with pytest.raises(NasBertError, match="no column 'category'"):
        run_study(study, echo=lambda _: None)
    with Database(study.db_url).session() as s:
        assert s.scalars(select(StageRow)).all() == []  # not even the supernet started


# -- evaluation -------------------------------------------------------------------------------------------
def _student(teacher, tiny_space) -> NasBertModel:
    arch = sample(tiny_space, teacher.embeddings_spec(), 0)
    torch.manual_seed(0)
    return NasBertModel(NasBertConfig(architecture=arch.to_dict())).eval()


def test_pair_spearman_against_gold_and_the_teacher(tmp_path, tiny_teacher):
    t = tiny_teacher
    # gold scores that are the teacher's own cosine similarities: the teacher's Spearman is 1
    a = [f"{w} by the sea" for w in WORDS]
    b = [f"{WORDS[(i * 3) % 10]} in the {w}" for i, w in enumerate(WORDS)]
    cfg = EvalConfig(**TINY)
    va, vb = (ev.sentence_vectors(t.encoder, t.tokenizer, x, 8, cfg.fidelity_max_seq_length, "cpu", t.pooling)
              for x in (a, b))
    gold = torch.nn.functional.cosine_similarity(va, vb, dim=-1).tolist()
    f = tmp_path / "gold.csv"
    f.write_text("sentence1,sentence2,score\n" + "".join(f'"{x}","{y}",{g}\n' for x, y, g in zip(a, b, gold, strict=True)))
    from nas_bert.evaluation_config import PairData

    pairs = PairData(name="gold", data=str(f))
    assert load_pairs(pairs)[2] == pytest.approx(gold)
    out = sd.pair_agreement(t.encoder, t.tokenizer, t, cfg, pairs)
    assert out["teacher_spearman"] == pytest.approx(1.0) and out["spearman"] == pytest.approx(1.0)
    assert out["pairs"] == 10


def test_evaluate_path_reports_every_task_pair_set_and_ood_set_by_name(tmp_path, tiny_study_file, tiny_teacher,
                                                                        tiny_space):
    study = _study(tiny_study_file, _data(tiny_study_file.parent))
    cfg = study.cfg.evaluate.model_copy(update=TINY)
    folder = tmp_path / "student"
    _student(tiny_teacher, tiny_space).save_pretrained(folder)
    tiny_teacher.tokenizer.save_pretrained(folder)
    (folder / "nas_bert.json").write_text(json.dumps({"hash": "abc123", "metrics": {}}))
    out = ev.evaluate_path(study, str(folder), False, None, cfg)  # None: the study's tasks, as `nas-bert run` does
    assert out.task == "topics"  # the first task gives the headline figures
    assert set(out.tasks) == {"topics", "polarity"} and out.accuracy == out.tasks["topics"]["accuracy"]
    for t in out.tasks.values():
        assert 0.0 <= t["accuracy"] <= 1.0 and 0.0 <= t["teacher_accuracy"] <= 1.0
    assert set(out.pairs) == {"sts"} and -1.0 <= out.pairs["sts"]["spearman"] <= 1.0 and out.pairs["sts"]["pairs"] == 10
    assert set(out.ood) == {"manuals"} and out.ood_fidelity == pytest.approx(out.ood["manuals"]["fidelity"])
    dumped = out.model_dump(mode="json")
    assert {"tasks", "pairs", "ood"} <= set(dumped)
    table = evaluate_table(out)
    assert all(f"{kind} {name}:" in table for kind, name in
               [("task", "topics"), ("task", "polarity"), ("pairs", "sts"), ("ood", "manuals")])
    info = json.loads((folder / "nas_bert.json").read_text())
    assert set(info["metrics"]["tasks"]) == {"topics", "polarity"}
    # the teacher's baseline: each task fine-tuned once, by name
    teacher = ev.evaluate_path(study, None, True, None, cfg)
    assert teacher.tasks == {n: {"accuracy": out.tasks[n]["teacher_accuracy"]} for n in ("topics", "polarity")}
    # what the export's index and the model card read from the database
    from nas_bert.export.folders import _evaluation

    met = _evaluation(study, "abc123", str(folder))
    assert set(met["eval_tasks"]) == {"topics", "polarity"} and set(met["eval_pairs"]) == {"sts"}
    card = _extra_metrics({"metrics": met})
    assert all(s in card for s in ("task topics", "task polarity", "pairs sts", "out of domain manuals",
                                   "fidelity out of domain (manuals"))


def test_a_study_without_its_own_data_reports_as_before(tmp_path, tiny_study_file, tiny_teacher, tiny_space):
    study = _study(tiny_study_file)
    folder = tmp_path / "student"
    _student(tiny_teacher, tiny_space).save_pretrained(folder)
    out = ev.evaluate_path(study, str(folder), False, None, EvalConfig(**TINY, ood_texts=16))
    assert out.task == "wordnet" and out.ood_fidelity is not None
    assert not {"tasks", "pairs", "ood"} & set(out.model_dump(mode="json"))
    assert study_data_lines(out.tasks, out.pairs, out.ood) == []


# -- choose_by ------------------------------------------------------------------------------------------
def _finalist(name: str, fidelity: float, probe: float | None, rounds: int = 0) -> dict:
    return {"name": name, "origin": "search", "trial": 1, "hash": name, "architecture": name, "arch_json": "{}",
            "params": 1, "measured_ms": 1.0, "over_budget": False, "fidelity": fidelity,
            "fidelity_interval": [fidelity - 0.01, fidelity + 0.01],
            **({"probe": {"task:topics": probe}} if probe is not None else {}),
            **({"rounds": [{"steps": 2 * (i + 1)} for i in range(rounds)]} if rounds else {})}


def test_choose_by_ranks_the_finalists_by_the_task_or_a_mix(tiny_study_file):
    rows = [_finalist("faithful", 0.9, 0.40), _finalist("accurate", 0.6, 0.80), _finalist("middle", 0.8, 0.65)]
    data = _data(tiny_study_file.parent)
    by_fidelity = _study(tiny_study_file, data)
    assert summarise(by_fidelity, 5.0, rows).chosen.name == "faithful"  # the default: unchanged
    by_task = _study(tiny_study_file, data, **{"search.choose_by": "task:topics"})
    result = summarise(by_task, 5.0, rows)
    assert result.chosen.name == "accurate" and result.runner_up == "middle"
    assert result.chosen.probe == {"task:topics": 0.80}
    mix = _study(tiny_study_file, data, **{"search.choose_by": {"fidelity": 0.5, "task:topics": 0.5}})
    assert summarise(mix, 5.0, rows).chosen.name == "middle"  # 0.725 against 0.70 and 0.65
    results = {r["name"]: r for r in rows}
    assert halve(list(results), results, {"task:topics": 1.0}) == ["accurate", "middle"]
    # a finalist without a probe (or with NaN) ranks last under a task criterion
    assert summarise(by_task, 5.0, [*rows, _finalist("unprobed", 0.99, None)]).finalists[-1].name == "unprobed"
    assert halve(["faithful", "unprobed"], {"faithful": rows[0], "unprobed": _finalist("unprobed", 0.99, None)},
                 {"task:topics": 1.0}) == ["faithful"]


def test_linear_probe_is_deterministic_and_learns_a_separable_task(tmp_path, tiny_teacher):
    f = _task_csv(tmp_path / "easy.csv", ["alpha", "omega"], n=60)
    from nas_bert.evaluation_config import TaskData

    task, cfg = TaskData(name="easy", data=str(f)), EvalConfig(**TINY)
    t = tiny_teacher
    first = sd.linear_probe(t.encoder, t.tokenizer, t, cfg, task)
    assert first == sd.linear_probe(t.encoder, t.tokenizer, t, cfg, task)
    assert first >= 0.8  # the label word is in the text


def test_choose_by_a_task_probes_every_finalist_and_picks_the_most_accurate(searched_tiny, tmp_path):
    from conftest import copy_study

    from nas_bert.choose import choose, chosen_finalist

    data = _data(tmp_path)
    study = load_study(copy_study(searched_tiny, tmp_path), overrides={
        "search.finalist_steps": 2, "distill.val_batches": 2, "search.choose_by": "task:topics",
        "search.finalist_baselines": False, "latency.fresh_process": False,  # the fewest finalists, timed here
        "evaluate.tasks": data["tasks"][:1], "evaluate.max_train_examples": 32, "evaluate.max_eval_examples": 16})
    result = choose(study, 5.0, progress=False)
    ok = [r for r in result.finalists if not r.over_budget]
    assert ok and all(0.0 <= r.probe["task:topics"] <= 1.0 for r in ok)
    assert result.chosen.probe["task:topics"] == max(r.probe["task:topics"] for r in ok)
    assert chosen_finalist(Database(study.db_url), study, 5.0).name == result.chosen.name
    from nas_bert.cli.tables import finalists_table

    assert f"{result.chosen.name} task:topics" in finalists_table(result)


def test_choose_by_fine_tuning_scores_the_rounds_after_the_first_and_picks_the_best_mix(searched_tiny, tmp_path,
                                                                                          monkeypatch):
    """Three rounds: the first (every finalist) without fine-tuning, each later one with it, so the cut after the
    second keeps the better half by the mix, and the choice is the best mix of the last. The fine-tuning is
    search.choose_protocol's (2 steps), not the evaluation's (40)."""
    from conftest import copy_study

    from nas_bert.choose import choose

    data = _data(tmp_path)
    file, given = copy_study(searched_tiny, tmp_path), {
        "search.finalist_steps": 2, "search.finalist_rounds": 3, "distill.val_batches": 2,
        "search.choose_by": {"fidelity": 1.0, "finetune:topics": 1.0}, "latency.fresh_process": False,
        "evaluate.tasks": data["tasks"][:1], "evaluate.finetune_steps": 40, "evaluate.max_train_examples": 32,
        "evaluate.max_eval_examples": 16, "search.choose_protocol": {"finetune_steps": 2}, "distill.steps": 12}
    study = load_study(file, overrides=given)
    steps, real = [], ev.finetune
    monkeypatch.setattr(ev, "finetune", lambda *a, **k: steps.append(a[4].finetune_steps) or real(*a, **k))
    result = choose(study, 5.0, progress=False)
    assert steps and set(steps) == {2}
    ok = [r for r in result.finalists if not r.over_budget]
    reached = {n: [r for r in ok if len(r.rounds or [None]) >= n] for n in (1, 2, 3)}
    assert len(reached[1]) > len(reached[2]) > len(reached[3]) > 0 and len(reached[2]) >= 3  # two cuts happened
    for r in ok:  # round by round: fine-tuned after the first round only
        for i, rnd in enumerate(r.rounds or [{"probe": r.probe}]):
            assert ("finetune:topics" in (rnd.get("probe") or {})) == (i > 0), (r.name, i, rnd)
    mix = {r.name: r.rounds[1]["fidelity"] + r.rounds[1]["probe"]["finetune:topics"] for r in reached[2]}
    assert {r.name for r in reached[3]} == set(sorted(mix, key=mix.get, reverse=True)[:len(reached[3])])
    assert all(0.0 <= r.probe["finetune:topics"] <= 1.0 for r in reached[3])
    best = max(reached[3], key=lambda r: r.fidelity + r.probe["finetune:topics"])
    assert result.chosen.name == best.name
    again = choose(study, 5.0, progress=False)  # resumed from the database: nothing is scored differently
    assert again.chosen.name == result.chosen.name
    assert {r.name: r.probe for r in again.finalists} == {r.name: r.probe for r in result.finalists}
    # search.choose_protocol.last_round: evaluate: the last round is measured again as the export is (distilled to
    # distill.steps, fine-tuned for the evaluation's 40 steps), its earlier rounds kept; the choice is the best mix
    # of the last round so measured
    steps.clear()
    evaluated = load_study(file, overrides={**given, "search.choose_protocol": {"finetune_steps": 2,
                                                                                "last_round": "evaluate"}})
    result = choose(evaluated, 5.0, progress=False)
    assert steps == [40] * len(reached[3])
    ok = [r for r in result.finalists if not r.over_budget]
    last = [r for r in ok if len(r.rounds or []) == 3]
    assert {r.name for r in last} == {r.name for r in reached[3]}
    assert all(r.measured_as == "evaluate" and r.rounds[2]["measured_as"] == "evaluate"
               and "measured_as" not in r.rounds[1] for r in last)
    # distilled as the export is: to distill.steps in all, continuing the second round's weights
    assert {(r.rounds[2]["steps"], r.rounds[2]["continued_from"]) for r in last} == {(12, 4)}
    assert result.chosen.name == max(last, key=lambda r: r.fidelity + r.probe["finetune:topics"]).name
    from nas_bert.cli.tables import finalists_table

    assert f"{result.chosen.name} finetune:topics {result.chosen.probe['finetune:topics']:.3f} (the evaluation's" \
        in finalists_table(result)
    margin = result.margin
    if margin is not None and margin.scores:  # the rival's accuracy and the chosen one's of the round both reached
        common = next(x for x in result.chosen.rounds if x["steps"] == margin.steps)
        assert margin.scores["finetune:topics"][0] == common["probe"]["finetune:topics"]
    steps.clear()
    assert choose(evaluated, 5.0, progress=False).chosen.name == result.chosen.name and steps == []  # stored
    back = choose(study, 5.0, progress=False)  # and back: the choice's last round, still stored, not redone
    assert steps == [] and {r.name: r.probe for r in back.finalists} == {r.name: r.probe for r in again.finalists}
    assert {tuple(x["steps"] for x in r.rounds) for r in back.finalists if len(r.rounds or []) == 3} == {(2, 4, 8)}
    # search.choose_protocol.last_round_seeds: 2: each last-round finalist run once more from its second round's
    # weights (another fine-tuning seed), ranked on the mean of its two runs, the two best's difference judged with
    # the runs' spread; its first runs, stored above, are not run again
    seeds: list[int] = []
    monkeypatch.setattr(ev, "finetune", lambda *a, **k: steps.append(a[4].finetune_steps) or seeds.append(a[4].seed)
                        or real(*a, **k))
    twice = load_study(file, overrides={**given, "search.choose_protocol": {
        "finetune_steps": 2, "last_round": "evaluate", "last_round_seeds": 2}})
    result = choose(twice, 5.0, progress=False)
    assert steps == [40] * len(reached[3]) and seeds == [twice.cfg.evaluate.seed + 1] * len(reached[3])
    last = [r for r in result.finalists if len(r.rounds or []) == 3]
    with Database(twice.db_url).session() as s:
        rows = {x.name: json.loads(x.metrics_json) for x in s.scalars(select(FinalistRow).where(
            FinalistRow.study == twice.name, FinalistRow.budget_ms == 5.0))}
    for r in last:
        runs = r.seed_figures
        assert len(runs) == 2 and r.fidelity == pytest.approx((runs[0]["fidelity"] + runs[1]["fidelity"]) / 2)
        assert r.rounds[2]["seed_figures"] == runs and "seeds" not in r.rounds[2]
        assert r.probe["finetune:topics"] == pytest.approx(sum(x["probe"]["finetune:topics"] for x in runs) / 2)
        kept = next(x for x in rows[r.name]["rounds"] if x.get("measured_as") == "evaluate")
        assert kept["seeds"][0]["continued_from"] == 4  # from the second round's weights, as the first run
        assert len(kept["seeds"][0]["probe_correct"]["finetune:topics"]) == len(kept["probe_correct"]["finetune:topics"])
    assert result.chosen.name == max(last, key=lambda r: r.fidelity + r.probe["finetune:topics"]).name
    sd = result.seeded
    assert sd is not None and sd.rival == result.runner_up and sd.seeds == 2 and sd.accuracy_paired
    assert sd.interval[0] < sd.delta < sd.interval[1] and result.separated == (sd.interval[0] > 0)
    assert f"last round run 2 times, ranked on the mean: {sd.delta:+.3f}" in finalists_table(result)
    steps.clear()
    assert choose(twice, 5.0, progress=False).chosen.name == result.chosen.name and steps == []  # stored
    keys = [Runner(s, echo=lambda _: None).inputs("finalists", "5ms", after=()) for s in (twice, evaluated)]
    assert keys[0] != keys[1] and "last_round_seeds" in keys[0] and "last_round_seeds" not in keys[1]
    assert section_inputs(twice, ("search",), False) == section_inputs(evaluated, ("search",), False)
    # search.choose_protocol.round_seeds: 2: each finalist of the second round (fine-tuning scored, a cut after it)
    # run once more from its first round's weights (its first runs, stored above, not again), the cut ranked on the
    # mean of the two, the finalists within noise of the one at the cut kept past the better half
    seeds.clear()
    monkeypatch.setattr(ev, "finetune", lambda *a, **k: seeds.append(a[4].seed) or real(*a, **k))
    rounds = load_study(file, overrides={**given, "search.choose_protocol": {"finetune_steps": 2, "round_seeds": 2}})
    result = choose(rounds, 5.0, progress=False)
    ok = [r for r in result.finalists if not r.over_budget]
    second, third = [r for r in ok if len(r.rounds or []) >= 2], [r for r in ok if len(r.rounds or []) == 3]
    assert seeds.count(rounds.cfg.evaluate.seed + 1) == len(second) == len(reached[2])
    with Database(rounds.db_url).session() as s:
        rows = {x.name: json.loads(x.metrics_json) for x in s.scalars(select(FinalistRow).where(
            FinalistRow.study == rounds.name, FinalistRow.budget_ms == 5.0))}
    runs = {r.name: next(x for x in rows[r.name]["rounds"] if x["steps"] == 4) for r in second}
    for r in second:
        assert len(runs[r.name]["seeds"]) == 1 and runs[r.name]["seeds"][0]["continued_from"] == 2
        assert r.rounds[1]["fidelity"] == pytest.approx(sum(x["fidelity"] for x in r.rounds[1]["seed_figures"]) / 2)
    mean = {r.name: r.rounds[1]["fidelity"] + r.rounds[1]["probe"]["finetune:topics"] for r in second}
    ranked, half = sorted(mean, key=mean.get, reverse=True), -(-len(second) // 2)
    assert sorted(r.name for r in third) == sorted(ranked[:len(third)]) and len(third) >= half
    ties = result.model_dump().get("kept_within_noise") or {}
    assert set(ties) == set(ranked[half:len(third)]) and set(ties.values()) <= {ranked[half - 1]}
    for name in ranked[half:len(third) + 1]:  # each tie within noise of the one at the cut, the next beyond it
        tie = seed_interval(runs[ranked[half - 1]], runs[name], list(runs.values()), criterion(rounds), name)
        assert (tie.interval[0] <= 0) == (name in ties)
    seeds.clear()
    assert choose(rounds, 5.0, progress=False).chosen.name == result.chosen.name and seeds == []  # stored
    keys = [Runner(s, echo=lambda _: None).inputs("finalists", "5ms", after=()) for s in (rounds, study)]
    assert keys[0] != keys[1] and "round_seeds" in keys[0] and "round_seeds" not in keys[1]
    # one round (no halving follows the first): every finalist run twice from its start, ranked on the mean
    once = load_study(file, overrides={**given, "search.finalist_rounds": 1, "search.choose_protocol": {
        "finetune_steps": 2, "last_round_seeds": 2}})
    result = choose(once, 5.0, progress=False)
    ok = [r for r in result.finalists if not r.over_budget]
    assert all(len(r.seed_figures or []) == 2 and not r.rounds for r in ok)
    best = max(ok, key=lambda r: r.fidelity + r.probe["finetune:topics"])
    if result.chosen.name != best.name:  # a searched best within the runs' noise of the best recipe: the recipe kept
        assert (result.tied_with_recipe or {}).get(best.name) == result.chosen.name and result.margin.rival == best.name
        assert result.margin.seeded["score"].interval[1] >= 0  # the recipe minus it: not below 0 beyond noise
    assert result.seeded is not None and result.seeded.rival == result.runner_up
    # the margin over those runs: the chosen against the best of the other kind, on the score and each term
    m = result.margin
    assert m is not None and m.seeded is not None and set(m.seeded) == {"score", "fidelity", "finetune:topics"}
    rival = next(r for r in ok if r.name == m.rival)
    assert m.seeded["score"].rival == m.rival and m.seeded["score"].delta == pytest.approx(
        result.chosen.fidelity + result.chosen.probe["finetune:topics"] - rival.fidelity - rival.probe["finetune:topics"])
    assert m.seeded["fidelity"].delta == pytest.approx(result.chosen.fidelity - rival.fidelity)
    assert f"margin over the last round's runs: {m.seeded['score'].delta:+.3f}" in finalists_table(result)



def test_fidelity_resamples_pair_two_students_on_the_same_texts(tmp_path, tiny_study_file, tiny_teacher, tiny_space):
    """`bench_baselines.py` compares two students' fidelities resample by resample: each folder's lists cover the
    evaluation's held-out and out-of-domain texts on the same resamples, so a student against itself differs by 0."""
    from nas_bert.evaluate import paired_interval

    cfg = _study(tiny_study_file).cfg.evaluate.model_copy(update={**TINY, "ood_texts": 40})
    folders = []
    for i in range(2):
        arch = sample(tiny_space, tiny_teacher.embeddings_spec(), i)
        torch.manual_seed(i)
        folders.append(tmp_path / f"student{i}")
        NasBertModel(NasBertConfig(architecture=arch.to_dict())).eval().save_pretrained(folders[-1])
        tiny_teacher.tokenizer.save_pretrained(folders[-1])
    a, b, again = (ev.fidelity_resamples(f, tiny_teacher, cfg, resamples=40) for f in (*folders, folders[0]))
    assert set(a) == set(b) == {"fidelity", "ood_fidelity"}
    assert all(len(x[k]) == 40 for x in (a, b) for k in a)
    assert paired_interval(a["fidelity"], again["fidelity"]) == (0.0, 0.0)  # the same student, the same resamples
    lo, hi = paired_interval(a["ood_fidelity"], b["ood_fidelity"])
    assert lo <= hi and (lo, hi) != (0.0, 0.0)
    recorded = ev.agreement(ev.load_student(folders[0]), tiny_teacher.tokenizer, tiny_teacher, cfg,
                            list(ev.load_task("wordnet", cfg)[0]["test"]["text"][: cfg.fidelity_texts]))
    assert min(a["fidelity"]) <= recorded["fidelity"] <= max(a["fidelity"])  # resamples around the figure itself
