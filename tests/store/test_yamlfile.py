"""The one YAML loader: a mapping of keys, then a validated model, each problem one line naming its source."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict

from nas_bert.errors import NasBertError
from nas_bert.store import parse_mapping, read_mapping, validate


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int


def test_a_mapping_is_read_and_validated(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("steps: 3\n")
    assert validate(_Model, read_mapping(p, "x"), "x").steps == 3


@pytest.mark.parametrize("text, message", [
    ("steps: [1, 2", "study YAML: not valid YAML"),
    ("- 1\n- 2\n", "study YAML: expected a mapping of keys, got list"),
    ("just text", "study YAML: expected a mapping of keys, got str"),
])
def test_bad_yaml_is_one_line_naming_the_source(text, message):
    with pytest.raises(NasBertError) as e:
        parse_mapping(text, "study YAML")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_bad_key_names_the_key_and_the_source():
    with pytest.raises(NasBertError, match=r"^study file s.yaml: key 'colour': unknown key"):
        validate(_Model, {"steps": 1, "colour": "red"}, "study file s.yaml")
    with pytest.raises(NasBertError, match=r"key 'steps': .* \(got 'many'\)"):
        validate(_Model, {"steps": "many"}, "study file s.yaml")
