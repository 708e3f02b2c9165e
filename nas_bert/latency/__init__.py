"""The latency model of a target device: NAS-BERT's per-operator lookup table plus a calibration.

Every operator the search can place, the embeddings, every map into a wider block and every output
map is timed once as the plain student module it is in an extracted model (equal widths and slices
into a narrower block cost nothing); a student's raw latency is the sum of its parts. What isolated
timings get wrong is corrected by `measured ~ a * raw + c * operators + w * resizes + b`, fitted on whole
students measured end to end: an operator timed alone in a loop runs with its weights and input hot in
cache and its threads awake (a < 1 where that flatters big matrix products), every operator in a model
pays a fixed cost its isolated timing does not show (c, per operator run; negative, never below minus the
cheapest operator's time, where the table's small operators were timed dearer alone than they run in a model),
and so does every change of width between blocks (w, per resize: a narrower block works on a strided slice, a wider
one on a concatenation; without it the calibration, taught by random students that change width at most blocks,
over-predicted the students of one width throughout, the teacher's own layers among them, by 5-8%). Summed timings alone
(`a * raw + b`) were 11-23% off on the students a search picks (mostly shallow, narrow, convolutional),
because a calibration on random students taught it the ratio of deep, wide ones. The calibration
students are half uniform random and half spread evenly over the space's latency range, so the small
students budgets ask for are fitted too; the fit passes through the largest of them (the teacher's own layers in a
space made from the teacher), whose time the budgets given as fractions of the teacher are made from. Timings live
in the study database under a device fingerprint, so a second search on the same machine measures nothing.

The room, lowest module first: `harness` times (interleaved rounds, disturbed blocks dropped, a new
process), `calibration` is the form above and its fit, `table` holds the keys, the device fingerprint, the
stored rows and `LatencyModel`, `students` chooses, times and fits the calibration students, and `build`
ensures a device's model is in the database and reports it.
"""

from nas_bert.latency.build import LatencyReport, ensure_latency_model, latency_report
from nas_bert.latency.calibration import (
    CALIBRATION_VERSION,
    Calibration,
    calibration_key,
    fit_calibration,
    fit_linear,
    loo_mape,
    operators,
    resizes,
)
from nas_bert.latency.harness import (
    MODEL_ROUNDS,
    build_student,
    in_fresh_process,
    measure_callables,
    measure_models,
    run_delay_ns,
)
from nas_bert.latency.runtime import RUNTIME_LABEL, RUNTIME_VARIANT, quantize_int8, runtime_call, runtime_job, session
from nas_bert.latency.students import (
    REFERENCE,
    calibration_architectures,
    calibration_students,
    in_run,
    reference_disturbed,
    reference_time,
    retimed,
    timed_beside,
)
from nas_bert.latency.table import (
    LatencyModel,
    device_fingerprint,
    embeddings_key,
    grow_key,
    hardware_name,
    load_table,
    op_key,
    output_key,
    table_specs,
)

__all__ = [
    "CALIBRATION_VERSION",
    "MODEL_ROUNDS",
    "REFERENCE",
    "RUNTIME_LABEL",
    "RUNTIME_VARIANT",
    "Calibration",
    "LatencyModel",
    "LatencyReport",
    "build_student",
    "calibration_architectures",
    "calibration_key",
    "calibration_students",
    "device_fingerprint",
    "embeddings_key",
    "ensure_latency_model",
    "fit_calibration",
    "fit_linear",
    "grow_key",
    "hardware_name",
    "in_fresh_process",
    "in_run",
    "latency_report",
    "load_table",
    "loo_mape",
    "measure_callables",
    "measure_models",
    "op_key",
    "operators",
    "output_key",
    "quantize_int8",
    "reference_disturbed",
    "reference_time",
    "resizes",
    "retimed",
    "run_delay_ns",
    "runtime_call",
    "runtime_job",
    "session",
    "table_specs",
    "timed_beside",
]
