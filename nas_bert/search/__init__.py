from nas_bert.search.optuna_search import (
    budgets_in_db,
    chosen_row,
    finish_search,
    latest_checkpoint,
    load_trained,
    open_context,
    optuna_study_name,
    pareto_rows,
    prepare_search,
    run_worker,
    search,
    search_inputs,
    seed_architectures,
    storage_for,
    suggest_architecture,
    trial_params,
)
from nas_bert.search.scoring import BlockScorer, kendall_tau, rescore

__all__ = ["BlockScorer", "budgets_in_db", "chosen_row", "finish_search", "kendall_tau", "latest_checkpoint", "load_trained", "open_context", "optuna_study_name", "pareto_rows", "prepare_search", "rescore", "run_worker", "search", "search_inputs", "seed_architectures", "storage_for", "suggest_architecture", "trial_params"]
