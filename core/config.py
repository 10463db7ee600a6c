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
        nested sections by their own view, less the fields marked :data:`COUNTED_WHEN_SET` that hold
        their default. Sections with other rules override it."""
        fields = type(self).model_fields
        return {name: fingerprint_view(getattr(self, name)) for name, field in fields.items()
                if not (field.json_schema_extra == COUNTED_WHEN_SET and getattr(self, name) == field.default)}


def fingerprint_view(value: Any) -> Any:
    """``value`` in JSON form for a fingerprint: sections by :meth:`Section.fingerprint_view`, lists and
    dicts item by item, anything else (other pydantic models too) as pydantic's JSON mode gives it."""
    if isinstance(value, Section):
        return value.fingerprint_view()
    if isinstance(value, (list, tuple)):
        return [fingerprint_view(item) for item in value]
    if isinstance(value, dict):
        return {str(key): fingerprint_view(item) for key, item in value.items()}  # as JSON mode keys them
    return to_jsonable_python(value)
