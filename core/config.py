"""The base of every config section, shared by the packages that define sections beside their code."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic_core import to_jsonable_python

COUNTED_WHEN_SET = {"fingerprint": "when_set"}
"""``json_schema_extra`` of a field added after runs existed, whose default keeps the behaviour those
runs had: it counts in a stage's fingerprint only when set to another value, so upgrading distill
does not redo their finished stages (:meth:`Section.fingerprint_view`)."""


class Section(BaseModel):
    """Base of every config section: immutable, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def fingerprint_view(self) -> dict[str, Any]:
        """The section as a stage's fingerprint hashes it: its JSON dump (``model_dump(mode="json")``),
        nested sections by their own view, less the fields that do not shape the output
        (:meth:`unfingerprinted`)."""
        left_out = self.unfingerprinted()
        return {name: fingerprint_view(getattr(self, name)) for name in type(self).model_fields if name not in left_out}

    def unfingerprinted(self) -> set[str]:
        """Names of the fields left out of :meth:`fingerprint_view`: those marked
        :data:`COUNTED_WHEN_SET` that hold their default. Sections add their own rules."""
        return {name for name, field in type(self).model_fields.items()
                if field.json_schema_extra == COUNTED_WHEN_SET and getattr(self, name) == field.default}


def fingerprint_view(value: Any) -> Any:
    """``value`` in JSON form for a fingerprint: sections by :meth:`Section.fingerprint_view`, other
    pydantic models by their JSON dump, lists and dicts item by item."""
    if isinstance(value, Section):
        return value.fingerprint_view()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [fingerprint_view(item) for item in value]
    if isinstance(value, dict):
        return {str(key): fingerprint_view(item) for key, item in value.items()}  # as JSON mode keys them
    return to_jsonable_python(value)
