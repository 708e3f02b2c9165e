"""The text tables the `nas-bert` commands print (without --json): one function per command's result."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the results' types only: the command line starts without importing the stages
    from nas_bert.choose import FinalistsResult, SearchReport
    from nas_bert.distill import DistillResult, MappingResult
    from nas_bert.evaluate import EvaluationResult
    from nas_bert.export import ExportResult
    from nas_bert.latency import LatencyReport
    from nas_bert.pipeline import RunResult, RunRow
    from nas_bert.search import FrontRow, Fronts, SearchResult
    from nas_bert.status import StudyStatus
    from nas_bert.supernet import SupernetResult


def supernet_table(s: SupernetResult) -> str:
    """`train-supernet`: the step reached, the checkpoint and each block's validation error."""
    lines = [f"supernet of study '{s.study}': step {s.step}/{s.target_steps} ({s.seconds} s this run)",
             f"checkpoint {s.checkpoint}  sha256 {str(s.sha256)[:12]}", "validation MSE per block:"]
    for name, losses in s.val_losses.items():
        if name != "step" and isinstance(losses, list):
            lines.append(f"  {name:<10} " + "  ".join(f"{x:8.4f}" for x in losses))
    if s.teacher_paths:
        lines.append("the teacher's first k layers taken from the supernet, against the untouched cut "
                     "(fidelity to the teacher's output):")
        lines += [f"  k={p.layers}: supernet {p.fidelity_supernet:.4f}, untouched {p.fidelity_untouched:.4f}, "
                  f"largest difference {p.max_abs_diff:.1e}" for p in s.teacher_paths]
    return "\n".join(lines)


def latency_table(r: LatencyReport) -> str:
    """`latency`: every operator's time and the calibration fitted on top of them."""
    table = r.table or {}
    lines = [f"latency table {r.fingerprint[:12]} ({len(table)} entries, ms)"]
    lines += [f"  {k:<28} {v:9.4f}" for k, v in table.items()]
    cal = r.calibration or {}
    lines.append(f"calibration: end-to-end ms = {cal.get('a', 0):.4f} x summed table + {cal.get('c', 0):.4f} ms "
                 f"x operators + {cal.get('w', 0):.4f} ms x resizes + {cal.get('b', 0):.4f} ms, "
                 f"fitted on {r.n} students, leave-one-out error {r.loo_mape_pct:.2f}%")
    return "\n".join(lines)


def front_table(front: list[FrontRow]) -> str:
    """One budget's feasible Pareto front, a row per trial."""
    head = f"  {'trial':>5} {'params':>10} {'pred ms':>8} {'approx':>8} {'rescored':>8}  architecture"
    rows = [head]
    for r in front:
        resc = f"{r.rescored_loss:8.4f}" if r.rescored_loss is not None else f"{'-':>8}"
        rows.append(f"  {r.trial:>5} {r.params:>10,} {r.predicted_ms:8.2f} {r.approx_loss:8.4f} {resc}  "
                    f"{r.architecture}")
    return "\n".join(rows)


def pareto_table(fronts: Fronts) -> str:
    """Each budget's front, under its budget (ms)."""
    return "\n".join(f"budget {b} ms:\n" + front_table(rows) for b, rows in fronts.root.items())


def search_table(s: SearchResult | SearchReport) -> str:
    """`search`: the trials' counts, the front, and the finalists' choice when there is one."""
    t = s.trials
    tau = "n/a" if s.kendall_tau is None else f"{s.kendall_tau:.2f}"
    lines = [
        (f"search '{s.optuna_study}' (budget {s.budget_ms:g} ms): {t['complete']} complete, {t['fail']} failed, "
        f"{t['pruned']} stood down, {s.feasible} feasible; {s.seconds} s this run"),
        (f"block scores computed this run: {s.block_scores_computed}; rescored {s.rescored}; "
        f"Kendall tau (approx vs rescored) {tau}"),
        "feasible Pareto front:",
        front_table(s.front),
    ]
    finalists = getattr(s, "finalists", None)  # `nas-bert search` reports its finalists' choice too
    if finalists is not None:
        lines += ["", finalists_table(finalists)]
    elif s.chosen:
        lines.append(f"best under budget by rescored loss: trial {s.chosen.trial} "
                     f"({s.chosen.predicted_ms:.2f} ms)")
    return "\n".join(lines)


def finalists_table(f: FinalistsResult) -> str:
    """The finalists of one budget ranked by fidelity, and the student chosen."""
    def num(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    lines = [(f"finalists of the {f.budget_ms:g} ms budget (the same short distillation; ranked by held-out "
              "fidelity; pred: the search's latency model, now: its calibration refitted in the finalists' timing "
              "run; judged: the time the budget judges):"),
             (f"  {'student':<18} {'origin':<9} {'pred ms':>7} {'now ms':>7} {'meas ms':>7} {'judged':>7} {'approx':>7} "
              f"{'fid. start':>10} {'fidelity':>8} {'interval':>13} {'steps':>5}  architecture")]
    for r in sorted(f.finalists, key=lambda r: (-len(r.rounds or []), -(r.fidelity or -1))):
        iv = r.fidelity_interval
        steps = str(r.rounds[-1]["steps"]) if r.rounds else "-" if r.over_budget else "first"
        lines.append(f"  {r.name:<18} {r.origin:<9} {num(r.predicted_ms, '7.2f')} "
                     f"{num(r.predicted_now_ms, '7.2f')} {r.measured_ms:7.2f} {num(r.judged_ms, '7.2f')} "
                     f"{num(r.approx_loss, '7.4f')} {num(r.fidelity_before, '10.3f')} "
                     f"{'over budget' if r.over_budget else num(r.fidelity, '8.3f'):>8} "
                     f"{f'{iv[0]:.3f}-{iv[1]:.3f}' if iv else '-':>13} {steps:>5}  {r.architecture}")
    c, taus = f.chosen, f.kendall_tau_vs_fidelity
    kind = "a hand-designed student (the baseline won)" if f.baseline_won else "a searched student"
    lines.append(f"chosen: {c.name}, {kind}, {c.measured_ms:.2f} ms measured"
                 + (" (OVER BUDGET: nothing the budget holds)" if f.over_budget else "")
                 + (f"; runner-up {f.runner_up} {'outside' if f.separated else 'inside'} its interval"
                    if f.runner_up else ""))
    if (sd := f.seeded) is not None:  # search.choose_protocol.last_round_seeds: the two best, training noise and all
        lines.append(f"last round run {sd.seeds} times, ranked on the mean: {sd.delta:+.3f} of search.choose_by's score "
                     f"against {sd.rival}, {sd.level:.0%} interval {sd.interval[0]:+.3f} to {sd.interval[1]:+.3f} "
                     f"({'beyond' if sd.interval[0] > 0 else 'within'} noise; one run's spread {sd.training_sd:.3f}, "
                     f"the texts' {sd.texts_sd:.3f}"
                     + ("" if sd.accuracy_paired else ", the accuracies' sampling left out: runs stored without it")
                     + ")")
    if f.kept_within_noise:  # search.choose_protocol.round_seeds: a cut's ties with the one at the cut
        lines.append("kept past the better half, within noise of the finalist at the cut (its rounds run several "
                     "times): " + "; ".join(f"{n} (beside {cut})" for n, cut in f.kept_within_noise.items()))
    if f.passed_over:  # a mixed search.choose_by: a recipe agrees more beyond noise
        lines.append("passed over (ranked higher by search.choose_by's mix, but a hand-designed finalist agrees more "
                     "with the teacher beyond the paired interval): " + "; ".join(
                         f"{n} (below {by})" for n, by in f.passed_over.items()))
    if f.tied_with_recipe:  # search.choose_protocol.ties: recipe
        lines.append("passed over (ranked first, but not beyond noise on search.choose_by's score: the recipe keeps a "
                     "tie, search.choose_protocol.ties): " + "; ".join(
                         f"{n} (tied with {by})" for n, by in f.tied_with_recipe.items()))
    if f.tie_at_edge:  # the same rule, its recipe judged within the latency model's error of the budget
        lines.append("kept on a tie with a recipe judged within the latency model's error of the budget (it may be "
                     "over the budget at export): " + "; ".join(f"{n} (tied with {by})" for n, by in f.tie_at_edge.items()))
    if probed := [r for r in f.finalists if r.probe]:  # search.choose_by a task: the ranking read these too
        lines.append("accuracy (search.choose_by; task: a linear probe, finetune: fine-tuned, on validation): " + "; ".join(
            f"{r.name} " + ", ".join(f"{k} {v:.3f}" for k, v in (r.probe or {}).items())
            + (" (the evaluation's fine-tuning)" if r.measured_as == "evaluate" else "")
            + (f" (mean of {len(r.seed_figures)} runs)" if r.seed_figures else "") for r in probed))
    if f.replacements:
        lines.append(f"over budget as measured: {', '.join(f.dropped_over_budget)}; in their place, the next by "
                     f"approximate loss that the budget holds: {', '.join(f.replacements)}")
    if grown := [r for r in f.finalists if getattr(r, "grown_of", None)]:  # search.reserve_grows
        lines.append("well under budget as measured: " + "; ".join(
            f"{r.grown_of} grown into {r.name} (judged {num(r.judged_ms, '.2f')} ms)" for r in grown))
    t = f.timing or {}
    if t.get("budget_x") is not None and t.get("teacher_ms"):
        ref = t.get("reference_ms") or t["teacher_ms"]
        lines.append(f"budget {t['budget_x']:g}x of the teacher: each student judged as that fraction of the teacher's "
                     f"layers timed in this run as when the budget was set ({ref:.2f} ms; {t['teacher_fit_ms']:.2f} ms "
                     f"when the latency model was fitted; the teacher's own module {t['teacher_ms']:.2f} ms)")
    else:
        lines.append(f"budget judged on the measured time at the fitted speed, as far as the drift and each student's "
                     f"own factor (now / pred) agree: a faster host tightens, a slower one loosens only where both say "
                     f"so (drift {num(t.get('drift'), '.2f')}x in this run)")
    if any(r.slowest_ms is not None for r in f.finalists):
        lines.append("each student judged by its slowest timing run (latency.finalist_runs; meas ms: the median): one "
                     "whose median holds by less than its runs' spread is over as often as not when timed again")
    if f.margin is not None:
        m = f.margin
        noise = (f"paired {m.level:.0%} interval {m.delta_interval[0]:+.3f} to {m.delta_interval[1]:+.3f}: "
                 f"{'beyond' if m.beyond_interval else 'within'} noise" if m.delta_interval else
                 f"{'beyond' if m.beyond_interval else 'within'} the chosen's interval")
        also = _other_scores(m)
        lines.append(f"margin: {m.delta:+.3f} fidelity against {m.rival} ({m.rival_origin}), the best of the other kind, "
                     f"after {m.steps} steps ({noise}){also}")
        if m.seeded:
            lines.append(f"margin over the last round's runs: {_seeded_margin(m)}")
    lines.append("Kendall tau with the first round's fidelity ranking: " + ", ".join(
        f"{k} {'n/a' if v is None else format(v, '.2f')}" for k, v in taus.items()))
    return "\n".join(lines)


def mapping_table(s: MappingResult) -> str:
    """`map-layers`: the held-out loss of the baseline mappings and of the best one found."""
    lines = [f"layer mapping for trial {s.trial} ({s.architecture})",
             (f"{s.points} distillation points, teacher layers 1..{s.teacher_layers}: "
             f"{s.mappings_possible} monotone mappings, searched by {s.method} "
             f"({s.fitness_evaluations} proxy distillations this run, {s.seconds} s)"),
             f"  {'mapping':<24} {'held-out loss':>14}"]
    for name, b in s.baselines.items():
        lines.append(f"  {name + ' ' + str(b.mapping):<24} {b.fitness:14.5f}")
    lines.append(f"  {'best ' + str(s.best.mapping):<24} {s.best.fitness:14.5f}")
    lines.append(f"best vs uniform: {100 * s.improvement_vs_uniform:+.2f}% lower loss")
    return "\n".join(lines)


def _number(v: Any) -> str:
    """One number of a held-out report: a float to 4 decimals, a count as it is, a missing one as "-"."""
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _flat(report: dict[str, Any]) -> dict[str, Any]:
    """A report with its nested records as dotted keys, so every number it holds gets a line."""
    flat: dict[str, Any] = {}
    for k, v in report.items():
        if isinstance(v, dict):
            flat.update({f"{k}.{ik}": iv for ik, iv in v.items()})
        else:
            flat[k] = v
    return flat


def distill_table(s: DistillResult) -> str:
    """`distill`: each held-out number at the start and at the end, and the weights kept."""
    who = f"trial {s.trial}" if s.trial is not None else f"the {'searched' if s.start == 'search' else s.start} student"
    lines = [(f"distilled {who} ({s.params:,} params) to step {s.step}/{s.target_steps} "
             f"with mapping {s.mapping} ({s.mapping_origin}); {s.seconds} s this run")]
    before, after = dict(s.before or {}), dict(s.after or {})
    # the training loop's record of the weights it kept (and saved), {"step", "value"}: its own line
    kept = after.pop("best", None)
    start, end = before.pop("step", None), after.pop("step", None)
    before, after = _flat(before), _flat(after)
    keys = sorted(set(before) | set(after))
    if keys:
        width = max(len(k) for k in keys)
        lines.append(f"  held-out, step {_number(start)} -> step {_number(end)}:")
        lines += [f"    {k:<{width}} {_number(before.get(k)):>9} -> {_number(after.get(k)):>9}" for k in keys]
    if isinstance(kept, dict):
        lines.append(f"  kept: the weights of step {_number(kept.get('step'))}, held-out fidelity "
                     f"{_number(kept.get('value'))} (the best validated, the start included)")
    lines.append(f"student folder: {s.student_path or '(not finished)'}")
    return "\n".join(lines)


def evaluate_table(m: EvaluationResult) -> str:
    """`evaluate`: one line per scalar metric the result holds (a student's or the teacher's)."""
    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [f"  {k:<22} {fmt(v)}" for k, v in m.model_dump().items()
             if not isinstance(v, (list, dict)) and k != "test_correct"]  # one character per test example: --json has it
    return "\n".join(lines + [f"  {line}" for line in study_data_lines(m.tasks, m.pairs, m.ood)])


def study_data_lines(tasks: dict[str, dict[str, Any]] | None, pairs: dict[str, dict[str, Any]] | None,
                     ood: dict[str, dict[str, Any]] | None) -> list[str]:
    """A line per task, pair set and out-of-domain set of the study's own data, by name."""
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [f"task {n}: accuracy {f(t.get('accuracy'))} (teacher {f(t.get('teacher_accuracy'))}, ratio "
             f"{f(t.get('accuracy_ratio'))}), label loyalty {f(t.get('label_loyalty'))}, fidelity {f(t.get('fidelity'))}"
             for n, t in (tasks or {}).items()]
    lines += [f"pairs {n}: Spearman {f(p.get('spearman'))} (teacher {f(p.get('teacher_spearman'))}) on "
              f"{f(p.get('pairs'))} pairs" for n, p in (pairs or {}).items()]
    lines += [f"ood {n}: fidelity {f(o.get('fidelity'))}, cosine {f(o.get('cosine'))}" for n, o in (ood or {}).items()]
    return lines


def export_table(s: ExportResult) -> str:
    """`export`: each exported student's size, predicted and measured times."""
    rows = [(f"exported {len(s.students)} students to {s.out_dir} "
             f"(teacher {s.students[0].teacher_ms:.2f} ms)"),
            (f"  {'name':<34} {'params':>11} {'MB':>6} {'pred':>7} {'pred now':>8} {'torch':>7} {'onnx':>7} "
             f"{'int8':>7} {'speed-up':>8}")]
    for st in s.students:
        m, now = st.measured_ms, st.predicted_now_ms
        pred = "-" if st.predicted_ms is None else f"{st.predicted_ms:.2f}"
        rows.append(f"  {st.name:<34} {st.params:>11,} {st.size_mb:6.1f} {pred:>7} "
                    f"{'-' if now is None else f'{now:.2f}':>8} "
                    f"{m.get('torch_fp32', 0):7.2f} {m.get('onnx_fp32', 0):7.2f} {m.get('onnx_int8', 0):7.2f} "
                    f"{st.speedup.get('torch_fp32', 0):7.2f}x")
    return "\n".join(rows)


def _other_scores(m: Any) -> str:
    """search.choose_by's other criteria in a margin: "; finetune:x 0.480 against 0.430"."""
    return "".join(f"; {k} {a:.3f} against {b:.3f}" for k, (a, b) in (m.scores or {}).items())


def _seeded_margin(m: Any) -> str:
    """A margin over the last round's runs (`Margin.seeded`): "+0.004 of search.choose_by's score, 90% interval
    -0.002 to +0.009 (within noise); fidelity -0.002 (-0.005 to +0.000), finetune:x +0.006 (+0.000 to +0.012)"."""
    sd = m.seeded["score"]
    terms = "; ".join(f"{k} {v.delta:+.3f} ({v.interval[0]:+.3f} to {v.interval[1]:+.3f})"
                      for k, v in m.seeded.items() if k != "score")
    return (f"{sd.delta:+.3f} of search.choose_by's score against {sd.rival} ({sd.seeds} runs each), {sd.level:.0%} "
            f"interval {sd.interval[0]:+.3f} to {sd.interval[1]:+.3f} with the runs' spread "
            f"({'beyond' if sd.interval[0] > 0 or sd.interval[1] < 0 else 'within'} noise)"
            + (f"; {terms}" if terms else ""))


def won(r: RunRow) -> str:
    """Which kind won a budget's finalists and by how much: a searched point or a hand-designed family."""
    m = r.margin
    assert m is not None
    kind = "a searched point" if r.origin == "search" else f"a hand-designed student ({r.origin})"
    if r.tied_with:  # search.choose_protocol.ties: recipe
        kind += ", kept on a tie (the best searched point did not beat it beyond noise),"
    elif r.tie_at_edge:
        kind += (f", kept on a tie with {', '.join(r.tie_at_edge.values())} (judged within the latency model's error "
                 "of the budget),")
    other = "the best hand-designed student" if r.origin == "search" else "the best searched point"
    given = f" ({r.budget_x:g}x of the teacher)" if r.budget_x is not None else ""
    if m.delta_interval:  # the paired interval of the difference
        lo, hi = m.delta_interval
        noise = (f"paired {m.level:.0%} interval {lo:+.3f} to {hi:+.3f} over the held-out texts: "
                 f"{'beyond' if m.beyond_interval else 'within'} noise")
    else:
        noise = f"{'beyond' if m.beyond_interval else 'within'} its interval"
    also = _other_scores(m) + (f"; over the last round's runs: {_seeded_margin(m)}" if m.seeded else "")
    if m.by and m.by_score:  # chosen by a weighted sum (search.choose_by): that first, then what it is made of
        terms = " + ".join(k if w == 1 else f"{w:g} x {k}" for k, w in m.by.items())
        return (f"{r.budget_ms:g} ms{given}: {kind} won on {terms} (search.choose_by), {r.student}: "
                f"{m.by_score[0]:.3f} against {m.by_score[1]:.3f} of {other} ({m.rival}) after {m.steps} steps of the "
                f"finalists' distillation; fidelity {m.fidelity:.3f} against {m.rival_fidelity:.3f} ({m.delta:+.3f}, "
                f"{noise}){also}")
    return (f"{r.budget_ms:g} ms{given}: {kind} won, {r.student}; fidelity {m.fidelity:.3f} against {m.rival_fidelity:.3f} "
            f"of {other} ({m.rival}) after {m.steps} steps of the finalists' distillation ({m.delta:+.3f}, {noise}){also}")


def run_table(s: RunResult) -> str:
    """`run`: one row per budget's student, its times at export, the stages run or skipped."""
    from nas_bert.study import RUNTIME_LABEL

    def f(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    rows = [f"study '{s.study}': {len(s.students)} students in {s.out} ({s.seconds:.0f} s this run)", "",
            (f"| {'budget':>6} | {'student':<22} | {'params':>10} | {'ms':>7} | {'int8 ms':>7} | {'fidelity':>8} | "
             f"{'ood fid.':>8} | {'accuracy':>8} | {'vs teacher':>10} | {'label loy.':>10} | {'prob. loy.':>10} | "
             "architecture"),
            "|" + "|".join("-" * w for w in (8, 24, 12, 9, 9, 10, 10, 10, 12, 12, 12, 14)) + "|"]
    for r in s.students:
        who = r.student if r.origin == "search" else f"{r.student} (baseline)"
        over = " OVER BUDGET" if r.over_budget else ""
        rows.append(f"| {r.budget_ms:>6g} | {who:<22} | {r.params:>10,} | "
                    f"{f(r.finalist_ms, '7.2f')} | {f(r.onnx_int8_ms, '7.2f')} | {f(r.fidelity, '8.3f')} | "
                    f"{f(r.ood_fidelity, '8.3f')} | {f(r.accuracy, '8.3f')} | "
                    f"{f(r.accuracy_ratio, '10.3f')} | {f(r.label_loyalty, '10.3f')} | "
                    f"{f(r.probability_loyalty, '10.3f')} | {r.architecture}{over}")
        t = r.truncated
        if t:
            rows.append(f"| {'':>6} | {'vs ' + t.name + ' (untouched)':<22} | {'':>10} | {t.measured_ms:7.2f} | "
                        f"{'':>7} | {f(t.fidelity, '8.3f')} | {f(t.ood_fidelity, '8.3f')} | {'':>8} | {'':>10} | "
                        f"{'':>10} | {'':>10} | the teacher's first {t.layers} layer(s), no training")
    if s.students:
        first = s.students[0]
        rows += ["", (f"teacher: {f(first.teacher_ms, '.2f')} ms (PyTorch fp32), "
                      f"accuracy {f(first.teacher_accuracy, '.3f')}"
                      + (f"; the host ran {first.drift:.2f}x as long as when the latency model was fitted"
                         if first.drift is not None else ""))]
        rows += [won(r) for r in s.students if r.margin is not None]
        if bounded := [r for r in s.students if r.accuracy_ratio_low is not None]:
            rows.append("accuracy / teacher's, paired bootstrap 90% interval over the test examples (one fine-tuning "
                        "seed): " + "; ".join(f"{r.budget_ms:g} ms {r.accuracy_ratio:.3f} ({r.accuracy_ratio_low:.3f}"
                                              f" to {r.accuracy_ratio_high:.3f})" for r in bounded))
        rows += [f"{r.budget_ms:g} ms finalists: " + ", ".join(f"{n} distilled {k} steps" for k, n in r.rounds)
                 + f"; the search's proxy ({r.proxy}) at zero steps, its Kendall tau against the first round: "
                   f"{f(r.proxy_tau, '.2f')}"
                 + (f", the screen's ({r.screen_steps} steps): {f(r.screen_tau, '.2f')}" if r.screen_steps else "")
                 # the table's ms is this run's: a slow moment of the host can put it over the budget it holds
                 + f"; {r.student} measured {r.finalist_ms:.2f} ms in their timing run (the median of its runs), judged "
                   f"{r.finalist_judged_ms:.2f} ms by the budget's rule"
                 for r in s.students if r.rounds]
        rows += [f"{r.budget_ms:g} ms layer mapping: {r.mapping['origin']} {r.mapping['mapping']}"
                 + (f" ({r.mapping['reason']})" if r.mapping.get("reason") else "") for r in s.students if r.mapping]
        rows += [f"{r.budget_ms:g} ms student, {line}" for r in s.students
                 for line in study_data_lines(r.tasks, r.pairs, r.ood)]
        rows += [f"{r.budget_ms:g} ms student at export: predicted {f(r.predicted_ms, '.2f')} ms (at the fit), "
                 + (f"{r.predicted_now_ms:.2f} ms (calibration refitted in the export's run), "
                    if r.predicted_now_ms is not None else "")
                 + f"measured {f(r.measured_ms, '.2f')} ms ({RUNTIME_LABEL.get(s.runtime, s.runtime)}), judged {f(r.judged_ms, '.2f')} ms against "
                 f"its {r.budget_ms:g} ms budget" + (f" ({r.budget_x:g}x of the teacher: judged as a fraction of the "
                                                     "teacher timed beside it)" if r.budget_x is not None else "")
                 # a point grown past its prediction (search.reserve_grows), or a family member that measured so
                 + ("; predicted over the budget, it stands as measured within it less the latency model's error"
                    if r.predicted_ms is not None and r.predicted_ms > r.budget_ms else "")
                 for r in s.students]
    stages = [f"{x.stage} {x.key}".strip() + (" (skipped)" if x.skipped else f" {x.seconds:.0f} s")
              for x in s.stages]
    fractions = {r.budget_x is not None for r in s.students}
    ms_rule = ("a budget in ms judges the time measured at the host's speed when the latency model was fitted, as far "
               "as the reference student and the calibration refitted in the same run agree (a faster host tightens "
               "the verdict, a slower one loosens it only where both say so)")
    x_rule = "a budget given as a fraction of the teacher judges the student against the teacher timed in the same run"
    rules = ([] if fractions == {True} else [ms_rule]) + ([x_rule] if True in fractions else [])
    rows += [(f"ms: {RUNTIME_LABEL.get(s.runtime, s.runtime)}, batch 1, the student and the truncated teacher timed in "
              "one run (the finalists'); the model cards hold the export's own timing"
              + "".join(f"; {x}" for x in rules)),
             f"Pareto front: {s.pareto_png}", "stages: " + ", ".join(stages)]
    return "\n".join(rows)


def status_table(s: StudyStatus) -> str:
    """`status`: what the study holds, stage by stage."""
    sn = s.supernet
    lines = [f"study '{s.study}'  db {s.db}"]
    if sn is None:
        lines.append("  1 supernet:     not trained (run `nas-bert train-supernet`)")
    else:
        lines.append(f"  1 supernet:     step {sn.step}/{sn.target_steps} ({sn.status}), {sn.checkpoint}")
    from nas_bert.study import RUNTIME_LABEL

    runtime = RUNTIME_LABEL.get(s.latency.runtime, s.latency.runtime)
    lines.append(f"  2 latency:      {s.latency.entries} operator timings on this device ({runtime})")
    lines.append(f"  3 block scores: {s.block_scores} memoised; {s.architectures} architectures scored")
    if not s.searches:
        lines.append("  4 search:       none yet (run `nas-bert search --latency-budget-ms X`)")
    for r in s.searches:
        t, best = r.trials, r.best
        b = "no feasible trial" if best is None else (
            f"best trial {best.trial}: loss {best.approx_loss:.4f} at {best.predicted_ms:.2f} ms")
        lines.append(f"  4 search {r.budget_ms:g} ms: {t['complete']} complete, {t['fail']} failed, "
                     f"{t['running']} running, {r.feasible} feasible; {b}")
    if s.stages:
        lines.append("`nas-bert run` stages (current: its inputs are those it was made from):")
        width = max(len(f"{r.stage} {r.key}") for r in s.stages)
        lines += [f"  {(r.stage + ' ' + r.key).ljust(width)}  {r.state:<8} {r.why}" for r in s.stages]
    return "\n".join(lines)
