"""Stages 3 and 4: block scores (`scoring`), the Optuna search to a latency budget (`trial_space`, `storage`,
`context`, `loop`), and its rescoring and fronts (`front`).
"""

from nas_bert.search.context import PROXY_LABELS, open_context, proxy_identity, proxy_of
from nas_bert.search.front import FrontRow, Fronts, SearchResult, chosen_row, finish_search, pareto_rows, recipe_hashes
from nas_bert.search.loop import (
    fits_within,
    latency_error,
    prepare_search,
    run_worker,
    search,
    search_inputs,
    seed_architectures,
)
from nas_bert.search.scoring import BlockScorer, kendall_tau, rescore
from nas_bert.search.storage import budgets_in_db, latest_checkpoint, load_trained, optuna_study_name, storage_for
from nas_bert.search.trial_space import suggest_architecture, trial_params

__all__ = ["PROXY_LABELS", "BlockScorer", "FrontRow", "Fronts", "SearchResult", "budgets_in_db", "chosen_row", "finish_search", "fits_within", "kendall_tau", "latency_error", "latest_checkpoint", "load_trained", "open_context", "optuna_study_name", "pareto_rows", "prepare_search", "proxy_identity", "proxy_of", "recipe_hashes", "rescore", "run_worker", "search", "search_inputs", "seed_architectures", "storage_for", "suggest_architecture", "trial_params"]
