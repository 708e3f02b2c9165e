"""Stage 8: how good a student is against its teacher: fidelity in and out of domain, fine-tuned accuracy
and loyalty (`evaluation`), the study's own tasks, pair sets and out-of-domain sets (`study_data`), and the
agreement measures themselves (`metrics`).
"""

from nas_bert.evaluate.evaluation import (
    EvaluationResult,
    agreement,
    evaluate_encoder,
    evaluate_path,
    fidelity_resamples,
    load_student,
    stored_evaluation,
    tasks_to_run,
    teacher_baseline,
    validation_accuracy,
    validation_scores,
)
from nas_bert.evaluate.metrics import (
    bootstrap_interval,
    difference_interval,
    fidelity,
    fidelity_bootstrap,
    fidelity_interval,
    paired_interval,
    readout_fidelity,
    readout_gain,
    readout_map,
)
from nas_bert.evaluate.study_data import linear_probe, ood_agreement, pair_agreement, study_data_agreement

__all__ = ["EvaluationResult", "agreement", "bootstrap_interval", "difference_interval", "evaluate_encoder", "evaluate_path", "fidelity", "fidelity_bootstrap", "fidelity_interval", "fidelity_resamples", "linear_probe", "load_student", "ood_agreement", "pair_agreement", "paired_interval", "readout_fidelity", "readout_gain", "readout_map", "stored_evaluation", "study_data_agreement", "tasks_to_run", "teacher_baseline", "validation_accuracy", "validation_scores"]
