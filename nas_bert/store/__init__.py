"""What persists: the study database's whole schema (`db`), how a process reaches it (`connection`: the URL and
the service's job from the environment), artefact identity and whole writes (`identity`: fingerprints, content
hashes, atomic files and folders), and the one YAML loader (`yamlfile`).
"""

from nas_bert.store.connection import DB_ENV, JOB_ENV
from nas_bert.store.db import (
    SCHEMA_VERSION,
    ArchitectureRow,
    Base,
    BlockScore,
    Checkpoint,
    ChoiceRow,
    Database,
    DistillRun,
    EvaluationRow,
    ExportRow,
    FinalistRow,
    JobRow,
    LatencyCalibration,
    LatencyRow,
    MappingEval,
    Meta,
    ScreenRow,
    StageRow,
    StudyRow,
    SupernetRun,
    TrialRow,
)
from nas_bert.store.failures import database_error, is_corrupt
from nas_bert.store.identity import (
    atomic_file,
    atomic_folder,
    atomic_write_text,
    cache_dir,
    cached_sha256,
    file_sha256,
    fingerprint,
    folder_identity,
    json_hash,
    safe_torch_load,
    sha256_hex,
)
from nas_bert.store.yamlfile import parse_mapping, read_mapping, validate

__all__ = ["DB_ENV", "JOB_ENV", "SCHEMA_VERSION", "ArchitectureRow", "Base", "BlockScore", "Checkpoint", "ChoiceRow", "Database", "DistillRun", "EvaluationRow", "ExportRow", "FinalistRow", "JobRow", "LatencyCalibration", "LatencyRow", "MappingEval", "Meta", "ScreenRow", "StageRow", "StudyRow", "SupernetRun", "TrialRow", "atomic_file", "atomic_folder", "atomic_write_text", "cache_dir", "cached_sha256", "database_error", "file_sha256", "fingerprint", "folder_identity", "is_corrupt", "json_hash", "parse_mapping", "read_mapping", "safe_torch_load", "sha256_hex",
           "validate"]
