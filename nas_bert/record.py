"""The base of every stage's typed result: a pydantic model whose JSON dump is what the stage prints and records."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer


class Record(BaseModel):
    """A stage's result. `model_dump(mode="json")` is the JSON `--json` prints and `nas-bert run` records, its keys
    in the fields' order.

    NaN and infinities stay what `json.dumps` writes (NaN, Infinity), also inside free-form mappings, where pydantic
    would otherwise write null: a NaN fidelity means "too few texts", not "missing". A field named in
    `absent_unless_given` is a key some results have and others lack (a seed student's name, the out-of-domain
    metrics when there are none): it is left out of the dump unless it was given, even as None.
    """

    model_config = ConfigDict(ser_json_inf_nan="constants")
    absent_unless_given: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _given_keys(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if not self.absent_unless_given or not isinstance(data, dict):
            return data
        given = self.model_fields_set
        return {k: v for k, v in data.items() if k in given or k not in self.absent_unless_given}
