"""Successive halving among a budget's finalists, the ranking by rounds reached, and the margin against the
best finalist of the other kind (searched against hand-designed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from nas_bert.choose.ranking import halve, margin, rounds_seen, summarise


def row(name: str, origin: str, fid: float, rounds: list[tuple[int, float]] | None = None, over: bool = False) -> dict:
    out = {"name": name, "origin": origin, "trial": None, "hash": name, "architecture": name, "arch_json": "{}",
           "params": 1, "measured_ms": 1.0, "over_budget": over, "fidelity": fid, "fidelity_before": fid - 0.2,
           "fidelity_interval": [fid - 0.01, fid + 0.01]}
    if rounds:
        out["rounds"] = [{"steps": s, "fidelity": f, "fidelity_interval": [f - 0.01, f + 0.01]} for s, f in rounds]
        out["fidelity"], out["fidelity_interval"] = rounds[-1][1], [rounds[-1][1] - 0.01, rounds[-1][1] + 0.01]
    return out


STUDY = SimpleNamespace(name="s", cfg=SimpleNamespace(search=SimpleNamespace(finalist_steps=10)))


def test_halving_keeps_the_better_half() -> None:
    results = {n: row(n, "search", f) for n, f in (("a", 0.5), ("b", 0.9), ("c", 0.7), ("d", 0.6), ("e", 0.8))}
    assert halve(list(results), results) == ["b", "e", "c"]  # 5 -> 3: the better half, rounded up
    assert halve(["b", "e", "c"], results) == ["b", "e"]


def test_a_cut_whose_rounds_ran_twice_keeps_the_finalists_within_noise_of_the_one_at_it() -> None:
    """search.choose_protocol.round_seeds: below the better half, each finalist whose mean score lies within the
    interval (the runs' spread and the texts') of the one at the cut goes on too, in order, up to the first beyond."""
    from nas_bert.choose.seeds import seed_mean

    by = {"fidelity": 1.0, "finetune:t": 1.0}

    def run(fid: float, acc: float, right: int) -> dict:
        return {"fidelity": fid, "fidelity_bootstrap": [fid - 0.002, fid, fid + 0.002],
                "probe": {"finetune:t": acc}, "probe_correct": {"finetune:t": "1" * right + "0" * (400 - right)}}

    def twice(fid: float, acc: float, spread: float) -> dict:  # two runs `spread` apart on the accuracy
        lo, hi = acc - spread / 2, acc + spread / 2
        return {**run(fid, lo, round(400 * lo)), "steps": 4, "seeds": [run(fid, hi, round(400 * hi))]}

    runs = {"a": twice(0.90, 0.80, 0.02), "b": twice(0.89, 0.79, 0.02), "c": twice(0.88, 0.79, 0.02),
            "d": twice(0.875, 0.785, 0.02), "e": twice(0.86, 0.70, 0.02), "f": twice(0.85, 0.78, 0.02)}
    results = {n: {**row(n, "search", 0.0), **seed_mean(r)} for n, r in runs.items()}
    assert halve(list(runs), results, by) == ["a", "b", "c"]  # without the runs: the better half
    # d is 0.015 under c with runs 0.02 apart: within noise, it goes on; f (0.04 under) is beyond it, e below
    assert halve(list(runs), results, by, runs) == ["a", "b", "c", "d"]
    steady = {n: {**r, "seeds": [{**r["seeds"][0], "probe": {"finetune:t": r["probe"]["finetune:t"]},
                                  "probe_correct": r["probe_correct"]}]} for n, r in runs.items()}
    steady_results = {n: {**row(n, "search", 0.0), **seed_mean(r)} for n, r in steady.items()}
    # runs that agree and many texts: d's 0.015 is beyond the interval, the better half alone goes on
    assert halve(list(steady), steady_results, by, steady) == ["a", "b", "c"]
    assert halve(list(runs), results, by, {n: runs[n] for n in "abc"}) == ["a", "b", "c"]  # d's runs unknown


def test_rounds_reached_rank_first_and_the_margin_compares_equal_steps() -> None:
    rows = [
        row("searched", "search", 0.0, [(10, 0.70), (20, 0.80)]),  # survived round 2
        row("truncated-3", "truncated", 0.0, [(10, 0.72), (20, 0.78)]),
        row("uniform-256", "uniform", 0.75),  # better than the chosen's first round but cut: ranks below
        row("slow", "search", 0.99, over=True),  # over the budget: never chosen
    ]
    res = summarise(STUDY, 5.0, rows)
    assert res.chosen.name == "searched" and not res.baseline_won
    assert [r.name for r in sorted(res.finalists, key=lambda r: r.name)]  # every row kept
    assert res.runner_up == "truncated-3"
    assert res.margin is not None and res.margin.rival == "truncated-3" and res.margin.steps == 20
    assert abs(res.margin.delta - 0.02) < 1e-9 and res.margin.beyond_interval
    # the proxies' agreement is reported against the first round, which every finalist reached
    assert "fidelity_before" in res.kendall_tau_vs_fidelity


def test_each_zero_step_proxy_is_ranked_against_the_first_round() -> None:
    """Every finalist's start by each zero-step figure: the gain orders five finalists as their first round does
    (tau 1), the readout the other way (tau -1); a figure three finalists lack has no tau."""
    rows = [row(n, "search" if i % 2 else "spread", f) for i, (n, f) in enumerate(zip("abcde", (.5, .6, .7, .8, .9)))]
    for i, r in enumerate(rows):
        r["gain_before"], r["readout_before"] = 0.1 * i, 1 - 0.1 * i
    res = summarise(STUDY, 5.0, rows)
    taus = res.kendall_tau_vs_fidelity
    assert taus["gain_before"] == pytest.approx(1.0) and taus["readout_before"] == pytest.approx(-1.0)
    assert taus["fidelity_before"] == pytest.approx(1.0)
    for r in rows[:3]:
        del r["gain_before"]
    assert summarise(STUDY, 5.0, rows).kendall_tau_vs_fidelity["gain_before"] is None


def test_a_family_winner_is_said_so() -> None:
    rows = [row("trial-3", "search", 0.0, [(10, 0.60), (20, 0.70)]), row("spread-2", "spread", 0.0, [(10, 0.65), (20, 0.74)])]
    res = summarise(STUDY, 5.0, rows)
    assert res.chosen.name == "spread-2" and res.baseline_won
    assert res.margin.rival == "trial-3" and res.margin.delta > 0
    assert margin(res.chosen, [res.chosen], 10) is None  # nobody of the other kind: no margin


def test_the_margin_is_judged_by_the_paired_interval_of_the_difference() -> None:
    """Both finalists met the same resamples of the held-out texts: what the texts add to both cancels. A steady
    +0.02 is beyond noise even inside each one's wide interval; a difference that changes sign is not."""
    base = [0.70 + 0.05 * ((i * 7) % 11 - 5) / 5 for i in range(200)]  # resample-to-resample spread of +-0.05
    steady = [row("searched", "search", 0.72), row("spread-2", "spread", 0.70)]
    steady[0]["fidelity_bootstrap"] = [v + 0.02 for v in base]
    steady[1]["fidelity_bootstrap"] = base
    for r in steady:
        r["fidelity_interval"] = [r["fidelity"] - 0.05, r["fidelity"] + 0.05]  # the rival inside ours
    m = summarise(STUDY, 5.0, steady).margin
    assert m.delta_interval is not None and abs(m.delta_interval[0] - 0.02) < 1e-9 and m.beyond_interval
    assert summarise(STUDY, 5.0, steady).separated
    noisy = [dict(steady[0]), dict(steady[1])]
    noisy[0]["fidelity_bootstrap"] = [v + (0.05 if i % 2 else -0.01) for i, v in enumerate(base)]
    m = summarise(STUDY, 5.0, noisy).margin
    assert m.delta_interval[0] < 0 < m.delta_interval[1] and not m.beyond_interval
    assert not summarise(STUDY, 5.0, noisy).separated


def test_the_rounds_seen_count_every_finalist_distilled_that_long() -> None:
    rows = [row("searched", "search", 0.0, [(10, 0.70), (20, 0.80)]), row("truncated-3", "truncated", 0.0, [(10, 0.72), (20, 0.78)]),
            row("uniform-256", "uniform", 0.65), row("slow", "search", 0.99, over=True)]
    assert rounds_seen(summarise(STUDY, 5.0, rows), 10) == [[10, 3], [20, 2]]


def test_a_mixed_criterion_ranks_the_last_round_and_the_margin_and_card_say_both() -> None:
    """search.choose_by {fidelity: 1, finetune:wordnet: 1}: the more faithful point loses to the one that fine-tunes
    better; the margin and the model card give the fine-tuned accuracy beside the fidelity."""
    from nas_bert.cli.tables import won
    from nas_bert.export.card import _origin
    from nas_bert.pipeline import RunRow

    study = SimpleNamespace(name="s", cfg=SimpleNamespace(search=SimpleNamespace(
        finalist_steps=10, choose_by={"fidelity": 1.0, "finetune:wordnet": 1.0})))
    faithful = row("trial-3", "search", 0.0, [(10, 0.70), (20, 0.75)])
    tuned = row("spread-4-i512", "spread-pruned", 0.0, [(10, 0.68), (20, 0.73)])
    faithful["probe"], tuned["probe"] = {"finetune:wordnet": 0.43}, {"finetune:wordnet": 0.48}
    res = summarise(study, 5.0, [faithful, tuned])
    assert res.chosen.name == "spread-4-i512" and res.baseline_won  # 1.21 against 1.18
    assert res.margin.scores == {"finetune:wordnet": [0.48, 0.43]} and res.margin.delta < 0
    text = _origin({"origin": "spread-pruned", "budget_ms": 5.0, "chosen_by": {"fidelity": 1.0, "finetune:wordnet": 1.0},
                    "finalist": res.chosen.model_dump(mode="json")})
    assert "evenly spread layers of the teacher with their least important feed-forward neurons pruned" in text
    assert "held-out fidelity 0.730 plus finetune:wordnet accuracy 0.480" in text
    assert "on held-out fidelity 0.6" in _origin({"origin": "spread", "budget_ms": 5.0, "finalist": {"fidelity": 0.6}})
    tie = _origin({"origin": "spread", "budget_ms": 5.0, "finalist": {"fidelity": 0.6}, "tied_with": ["trial-3"]})
    assert "A hand-designed student kept on a tie" in tie and "(trial-3) did not beat it beyond noise" in tie
    assert "won this budget" not in tie
    line = won(RunRow.model_construct(budget_ms=5.0, budget_x=0.5, origin="spread-pruned", student="spread-4-i512",
                                      margin=res.margin))
    assert "fidelity 0.730 against 0.750" in line and "finetune:wordnet 0.480 against 0.430" in line
    # the line leads with what chose it: the weighted sum, then its parts
    assert "won on fidelity + finetune:wordnet (search.choose_by), spread-4-i512: 1.210 against 1.180" in line
    assert res.margin.by_score == pytest.approx([1.21, 1.18])


def test_a_mixed_criterion_passes_over_a_searched_point_a_recipe_beats_on_fidelity_beyond_noise() -> None:
    """{fidelity: 1, finetune:wordnet: 1}: the searched point fine-tunes 0.024 higher (one seed) but agrees 0.007
    less with the teacher on every resample than a recipe of its round: the recipe is the floor, and the next
    searched point, which ties the recipe on fidelity, is chosen. A tie within noise passes over no one."""
    from nas_bert.cli.tables import finalists_table

    study = SimpleNamespace(name="s", cfg=SimpleNamespace(search=SimpleNamespace(
        finalist_steps=10, choose_by={"fidelity": 1.0, "finetune:wordnet": 1.0})))
    base = [0.78 + 0.03 * ((i * 7) % 11 - 5) / 5 for i in range(200)]
    traded = row("trial-30.L1.drop", "search", 0.0, [(10, 0.71), (20, 0.773)])
    tied = row("spread-2-i512+layer4", "search", 0.0, [(10, 0.72), (20, 0.780)])
    recipe = row("spread-2-i768", "spread-pruned", 0.0, [(10, 0.72), (20, 0.780)])
    cut = row("pruned-2-i768", "pruned", 0.0, [(10, 0.80)])  # cut after the first round: not the floor at 20 steps
    for r, shift, tune in ((traded, -0.007, 0.689), (tied, 0.0005, 0.668), (recipe, 0.0, 0.665)):
        r["rounds"][-1]["fidelity_bootstrap"] = [v + shift for v in base]
        r["probe"] = {"finetune:wordnet": tune}
    cut["fidelity_bootstrap"] = [v + 0.05 for v in base]
    res = summarise(study, 5.0, [traded, tied, recipe, cut])
    assert res.chosen.name == "spread-2-i512+layer4" and not res.baseline_won
    assert res.passed_over == {"trial-30.L1.drop": "spread-2-i768"}
    assert res.runner_up == "spread-2-i768"
    assert "passed over" in finalists_table(res.model_copy(update={"timing": {}}))
    # without the recipe's tie, the recipe itself is chosen over the traded point
    res = summarise(study, 5.0, [traded, recipe])
    assert res.chosen.name == "spread-2-i768" and res.baseline_won and res.margin.rival == "trial-30.L1.drop"
    # by the fidelity alone, or when the trade is within noise, the ranking stands
    fid = SimpleNamespace(name="s", cfg=SimpleNamespace(search=SimpleNamespace(finalist_steps=10, choose_by="fidelity")))
    assert summarise(fid, 5.0, [traded, recipe]).chosen.name == "spread-2-i768"
    noisy = dict(traded, rounds=[*traded["rounds"][:-1], dict(traded["rounds"][-1], fidelity_bootstrap=[
        v + (0.02 if i % 2 else -0.03) for i, v in enumerate(base)])])
    res = summarise(study, 5.0, [noisy, recipe])
    assert res.chosen.name == "trial-30.L1.drop" and "passed_over" not in res.model_dump()


def test_a_round_run_twice_ranks_on_the_mean_with_the_runs_spread_in_its_interval() -> None:
    """search.choose_protocol.last_round_seeds: a round's runs averaged (fidelity, its resamples, accuracies), and
    the two best's difference judged with the runs' spread beside the texts' sampling."""
    from nas_bert.choose.seeds import seed_interval, seed_mean

    by = {"fidelity": 1.0, "finetune:t": 1.0}

    def run(fid: float, acc: float, right: str) -> dict:
        return {"fidelity": fid, "fidelity_bootstrap": [fid - 0.01, fid, fid + 0.01, None],
                "probe": {"finetune:t": acc}, "probe_correct": {"finetune:t": right}}

    n = 400
    a = {**run(0.90, 0.80, "1" * 320 + "0" * 80), "steps": 40, "seeds": [run(0.92, 0.82, "1" * 328 + "0" * 72)]}
    b = {**run(0.88, 0.78, "1" * 312 + "0" * 88), "steps": 40, "seeds": [run(0.90, 0.80, "1" * 320 + "0" * 80)]}
    mean = seed_mean(a)
    assert mean["fidelity"] == pytest.approx(0.91) and mean["probe"] == {"finetune:t": pytest.approx(0.81)}
    assert mean["fidelity_bootstrap"][:3] == pytest.approx([0.90, 0.91, 0.92]) and mean["fidelity_bootstrap"][3] is None
    assert "seeds" not in mean and "probe_correct" not in mean  # the per-example records stay in the row
    assert mean["seed_figures"] == [{"fidelity": 0.90, "probe": {"finetune:t": 0.80}},
                                    {"fidelity": 0.92, "probe": {"finetune:t": 0.82}}]
    one = run(0.9, 0.8, "1" * n)
    assert seed_mean(one) == {k: v for k, v in one.items() if k != "probe_correct"}  # one run: as it was
    si = seed_interval(a, b, [a, b], by, "b")
    assert si.delta == pytest.approx(0.04) and si.seeds == 2 and si.rival == "b" and si.accuracy_paired
    assert si.training_sd == pytest.approx(0.04 / 2**0.5)  # each one's two mixes 0.04 apart
    half = (si.interval[1] - si.interval[0]) / 2
    assert si.interval[0] < si.delta < si.interval[1]
    assert half == pytest.approx(1.6449 * (si.training_sd**2 + si.texts_sd**2) ** 0.5, rel=1e-3)
    assert si.interval[0] < 0  # two runs 0.04 apart each: a 0.04 lead is within that noise
    steady = {**a, "seeds": [run(0.90, 0.80, "1" * 320 + "0" * 80)]}  # runs that agree: the same lead is beyond it
    other = {**run(0.88, 0.78, "1" * 312 + "0" * 88), "seeds": [run(0.86, 0.78, "1" * 312 + "0" * 88)]}
    tight = seed_interval(steady, other, [steady, other], by, "b")
    assert tight.training_sd == pytest.approx(0.02 / 2) and tight.interval[0] > 0
    # runs stored without which examples they got right: the accuracies' sampling is left out, and said so
    def bare(x: dict) -> dict:
        return {k: [bare(y) for y in v] if k == "seeds" else v for k, v in x.items() if k != "probe_correct"}

    bare_a, bare_b = bare(a), bare(b)
    assert not seed_interval(bare_a, bare_b, [bare_a, bare_b], by, "b").accuracy_paired
    assert seed_interval(one, one, [one], by, "x") is None  # one run each: no spread to judge by


def test_a_margin_over_runs_judges_the_score_and_each_of_its_terms() -> None:
    """`term_intervals` (`Margin.seeded`): the chosen student against the best of the other kind over the last
    round's runs, on search.choose_by's score and on each term alone: a lead on the sum can hide a loss on a term."""
    from nas_bert.choose.seeds import seed_interval, term_intervals

    by = {"fidelity": 1.0, "finetune:t": 1.0}

    def run(fid: float, acc: float, right: str) -> dict:
        return {"fidelity": fid, "fidelity_bootstrap": [fid - 0.002, fid, fid + 0.002, fid + 0.001],
                "probe": {"finetune:t": acc}, "probe_correct": {"finetune:t": right}}

    # a: more accurate by 0.03 beyond noise, 0.01 less faithful on every resample
    a = {**run(0.89, 0.83, "1" * 332 + "0" * 68), "seeds": [run(0.89, 0.83, "1" * 332 + "0" * 68)]}
    b = {**run(0.90, 0.80, "0" * 12 + "1" * 320 + "0" * 68), "seeds": [run(0.90, 0.80, "0" * 12 + "1" * 320 + "0" * 68)]}
    terms = term_intervals(a, b, [a, b], by, "b")
    assert set(terms) == {"score", "fidelity", "finetune:t"}
    assert terms["score"] == seed_interval(a, b, [a, b], by, "b") and terms["score"].delta == pytest.approx(0.02)
    assert terms["fidelity"].delta == pytest.approx(-0.01) and terms["fidelity"].interval[1] < 0  # beyond, below
    assert terms["finetune:t"].delta == pytest.approx(0.03) and terms["finetune:t"].interval[0] > 0
    assert set(term_intervals(a, b, [a, b], {"fidelity": 1.0}, "b")) == {"score"}  # one term: the score is it
    one = run(0.9, 0.8, "1" * 400)
    assert term_intervals(one, one, [one], by, "x") is None


def _tie_study(ties: str = "recipe") -> SimpleNamespace:
    protocol = SimpleNamespace(ties=ties, last_round_seeds=1)
    return SimpleNamespace(name="s", cfg=SimpleNamespace(search=SimpleNamespace(finalist_steps=10,
                                                                                choose_protocol=protocol)))


def _pair(lead: float, noisy: bool, searched: str = "searched") -> list[dict]:
    """A searched finalist `lead` ahead of the spread-2 recipe on fidelity, on the same resamples of the texts:
    steadily (beyond noise) or with a difference that changes sign (within it)."""
    base = [0.70 + 0.05 * ((i * 7) % 11 - 5) / 5 for i in range(200)]
    rows = [row(searched, "search", 0.70 + lead), row("spread-2", "spread", 0.70)]
    rows[0]["fidelity_bootstrap"] = [v + lead + ((0.03 if i % 2 else -0.03) if noisy else 0.0) for i, v in enumerate(base)]
    rows[1]["fidelity_bootstrap"] = base
    return rows


def test_a_searched_point_that_does_not_beat_the_best_recipe_beyond_noise_leaves_the_choice_to_the_recipe() -> None:
    """search.choose_protocol.ties "recipe": the searched point ranked first within noise of the best recipe is
    passed over (the best of many noisy scores is partly luck; the recipe is free and known); beyond noise it
    stays; "score" keeps the ranking's first however close."""
    from nas_bert.choose.ranking import tie_to_recipe
    from nas_bert.choose.rows import ranked

    tied = ranked(None, _tie_study(), 5.0, "p", _pair(0.004, noisy=True), {})
    assert tied.chosen.name == "spread-2" and tied.baseline_won
    assert tied.tied_with_recipe == {"searched": "spread-2"}
    assert tied.margin.rival == "searched" and tied.margin.delta < 0  # the recipe kept, a little behind, within noise
    assert tie_to_recipe(tied, {"fidelity": 1.0}) is None  # a recipe chosen: nothing to pass over
    beyond = ranked(None, _tie_study(), 5.0, "p", _pair(0.004, noisy=False), {})
    assert beyond.chosen.name == "searched" and not beyond.tied_with_recipe
    first = ranked(None, _tie_study("score"), 5.0, "p", _pair(0.004, noisy=True), {})
    assert first.chosen.name == "searched" and first.tied_with_recipe is None
    # two searched points both within noise of the recipe: each is passed over in turn
    two = [*_pair(0.004, noisy=True), _pair(0.002, noisy=True, searched="other")[0]]
    both = ranked(None, _tie_study(), 5.0, "p", two, {})
    assert both.chosen.name == "spread-2" and both.tied_with_recipe == {"searched": "spread-2", "other": "spread-2"}
    # a recipe successive halving cut (within noise of it in the round they shared) lost there: the choice stands
    cut = _pair(0.004, noisy=True)
    cut[0]["rounds"] = [{"steps": 10, "fidelity": 0.704, "fidelity_bootstrap": cut[0]["fidelity_bootstrap"]},
                        {"steps": 20, "fidelity": 0.75, "fidelity_bootstrap": cut[0]["fidelity_bootstrap"]}]
    cut[1]["rounds"] = [{"steps": 10, "fidelity": 0.70, "fidelity_bootstrap": cut[1]["fidelity_bootstrap"]}]
    kept = ranked(None, _tie_study(), 5.0, "p", cut, {})
    assert kept.margin.steps == 10 and not kept.margin.beyond_interval
    assert kept.chosen.name == "searched" and kept.tied_with_recipe is None


def test_the_export_reads_which_searched_points_a_recipe_was_kept_over(tmp_path) -> None:
    """`tied_with`: from the budget's stored choice, the searched finalists passed over for the recipe on a tie,
    which the exported model card then says (a tie, not a win)."""
    from nas_bert.choose.choice import record_choice, tied_with
    from nas_bert.choose.rows import ranked
    from nas_bert.store import Database

    db, study = Database(f"sqlite:///{tmp_path / 's.db'}"), _tie_study()
    assert tied_with(db, study, 5.0, "spread-2") is None  # nothing chosen yet
    record_choice(db, study, 5.0, "p", ranked(None, study, 5.0, "p", _pair(0.004, noisy=True), {}))
    assert tied_with(db, study, 5.0, "spread-2") == ["searched"]
    record_choice(db, study, 5.0, "p", ranked(None, study, 5.0, "p", _pair(0.004, noisy=False), {}))
    assert tied_with(db, study, 5.0, "spread-2") is None  # the latest choice won beyond noise: no tie
    db.dispose()


def test_a_recipe_judged_at_the_budgets_edge_does_not_take_a_tie() -> None:
    """A tie goes to the recipe only where the budget holds it with the latency model's error to spare: one judged
    within that error of the budget may be over it at export, the searched point as good is then kept (and said)."""
    from nas_bert.choose.rows import ranked
    from nas_bert.cli.tables import finalists_table, won
    from nas_bert.pipeline import RunRow

    def at(ms: float) -> list[dict]:
        rows = _pair(0.004, noisy=True)
        rows[0]["judged_ms"], rows[1]["judged_ms"] = 4.5, ms
        return rows

    edge = ranked(None, _tie_study(), 5.0, "p", at(4.95), {}, spare=0.03)  # 1% under: within the 3% error
    assert edge.chosen.name == "searched" and not edge.baseline_won
    assert edge.tie_at_edge == {"searched": "spread-2"} and edge.tied_with_recipe is None
    held = ranked(None, _tie_study(), 5.0, "p", at(4.8), {}, spare=0.03)  # 4% under: held with the error to spare
    assert held.chosen.name == "spread-2" and held.tied_with_recipe == {"searched": "spread-2"}
    assert held.tie_at_edge is None and "tie_at_edge" not in held.model_dump()
    assert ranked(None, _tie_study(), 5.0, "p", at(4.95), {}).chosen.name == "spread-2"  # no error given: it holds
    assert "judged within the latency model's error" in finalists_table(edge.model_copy(update={"timing": {}}))
    # `nas-bert run`'s line says which way the tie went, from the choice itself
    line = won(RunRow.model_construct(budget_ms=5.0, origin="search", student="searched", margin=edge.margin,
                                      tie_at_edge=edge.tie_at_edge))
    assert "a searched point, kept on a tie with spread-2 (judged within the latency model's error" in line
    line = won(RunRow.model_construct(budget_ms=5.0, origin="spread", student="spread-2", margin=held.margin,
                                      tied_with=held.tied_with_recipe))
    assert "kept on a tie (the best searched point did not beat it beyond noise)" in line
    assert "kept on a tie" not in won(RunRow.model_construct(budget_ms=5.0, origin="spread", student="spread-2",
                                                             margin=held.margin))  # chosen outright


def test_the_tie_is_judged_on_the_runs_interval_of_the_score_where_the_last_round_ran_several_times() -> None:
    """With several runs (`Margin.seeded`) the score's interval, training spread and all, decides; with one run
    and a mixed score no interval of the score exists and the ranking stands."""
    from nas_bert.choose.ranking import tie_to_recipe
    from nas_bert.choose.seeds import SeedInterval

    res = summarise(_tie_study(), 5.0, _pair(0.004, noisy=False))  # beyond noise on the texts alone
    by = {"fidelity": 1.0, "finetune:t": 1.0}

    def runs(lo: float, hi: float) -> object:
        score = SeedInterval(rival="spread-2", seeds=2, delta=(lo + hi) / 2, interval=[lo, hi], training_sd=0.003,
                             texts_sd=0.003)
        return res.model_copy(update={"margin": res.margin.model_copy(update={"seeded": {"score": score}})})

    assert tie_to_recipe(runs(-0.002, 0.009), by) == "spread-2"  # the 1/2 budget's kind of lead: a tie
    assert tie_to_recipe(runs(0.007, 0.021), by) is None  # beyond noise: the searched point stands
    assert tie_to_recipe(res, by) is None  # one run, a mixed score: no interval of it
    assert tie_to_recipe(res, {"fidelity": 1.0}) is None  # by fidelity: its paired interval, beyond noise here
