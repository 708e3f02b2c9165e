"""The one YAML loader: study files, search spaces and posted study files are read and checked here.

A YAML document becomes a mapping of keys, then a pydantic model; every problem is one line naming
where it came from (`source`: "study file studies/demo.yaml", "search space ...", "study YAML").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from nas_bert.errors import NasBertError, format_validation_error

M = TypeVar("M", bound=BaseModel)


def parse_mapping(text: str, source: str) -> dict[str, Any]:
    """YAML text -> its top-level mapping; invalid YAML or another top-level type is a one-line error."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise NasBertError(f"{source}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise NasBertError(f"{source}: expected a mapping of keys, got {type(data).__name__}")
    return data


def read_mapping(path: Path, source: str) -> dict[str, Any]:
    """`parse_mapping` of a file's text."""
    return parse_mapping(path.read_text(), source)


def validate(model: type[M], data: dict[str, Any], source: str) -> M:
    """`model` validated from `data`; pydantic's report becomes one line naming each key and the problem."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise NasBertError(format_validation_error(e, source)) from None
