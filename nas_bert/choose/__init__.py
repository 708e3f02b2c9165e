"""Stage 5, the choice: the searched students the proxies like best, the seeds and the hand-designed
students of a budget, timed end to end (budgets judged as measured), short-distilled alike and ranked by
held-out fidelity (`search.choose_by`: or a task's accuracy, probed or fine-tuned, or a mix).

`candidates` (who competes), `timing` (the finalists' timing run and the budget's rules), `finalists`
(`choose` and its typed result), `choice` (the budget's recorded choice), `seeds` (a last round run several
times), `reference` (the untouched first layers beside a student). The room's public names are
re-exported here.
"""

from nas_bert.choose.candidates import Candidate, baseline_family, family_to_time
from nas_bert.choose.choice import chosen_finalist, distill_chosen, latest_choice, tied_with
from nas_bert.choose.finalists import (
    Finalist,
    FinalistsResult,
    Margin,
    SearchReport,
    TruncatedReference,
    choose,
    criterion,
    summarise,
)
from nas_bert.choose.reference import truncated_reference
from nas_bert.choose.timing import (
    budget_fraction,
    holds,
    host_speed,
    judged_ms,
    reorders,
    replace_over_budget,
    replace_under_budget,
)

__all__ = ["Candidate", "Finalist", "FinalistsResult", "Margin", "SearchReport", "TruncatedReference", "baseline_family", "budget_fraction", "choose", "chosen_finalist", "criterion", "distill_chosen", "family_to_time", "holds", "host_speed", "judged_ms", "latest_choice", "reorders", "replace_over_budget", "replace_under_budget", "summarise", "tied_with", "truncated_reference"]
