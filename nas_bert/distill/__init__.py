"""Stages 6 and 7: which teacher layer each student layer learns from (`mapping`, DEAP), the distillation
losses (`objective`), and a chosen student extracted, mapped and distilled (`students`).
"""

from nas_bert.distill.mapping import (
    MappingSearch,
    best_memoised,
    count_monotone,
    mutate_monotone,
    protocol_hash,
    repair,
)
from nas_bert.distill.objective import (
    DistillModule,
    DistillObjective,
    TeacherCache,
    TeacherTaps,
    check_mapping,
    distill_points,
    last_layers_mapping,
    relation_kl,
    similarity_loss,
    uniform_mapping,
)
from nas_bert.distill.students import (
    DistillResult,
    MappingFitness,
    MappingResult,
    StudentContext,
    distill,
    distill_baseline,
    distill_identity,
    distill_student,
    map_layers,
    map_student_layers,
    mapping_summary,
    resolve_budget,
    trial_architecture,
)

__all__ = ["DistillModule", "DistillObjective", "DistillResult", "MappingFitness", "MappingResult", "MappingSearch", "StudentContext", "TeacherCache", "TeacherTaps", "best_memoised", "check_mapping", "count_monotone", "distill", "distill_baseline", "distill_identity", "distill_points", "distill_student", "last_layers_mapping", "map_layers", "map_student_layers", "mapping_summary", "mutate_monotone", "protocol_hash", "relation_kl", "repair", "resolve_budget", "similarity_loss", "trial_architecture", "uniform_mapping"]
