from nas_bert.choose.finalists import (
    Candidate,
    baseline_family,
    choose,
    chosen_finalist,
    family_to_time,
    holds,
    host_speed,
    judged_ms,
    reorders,
    replace_over_budget,
    summarise,
    truncated_reference,
)

__all__ = ["Candidate", "baseline_family", "choose", "chosen_finalist", "family_to_time", "holds", "host_speed", "judged_ms", "reorders", "replace_over_budget", "summarise", "truncated_reference"]
