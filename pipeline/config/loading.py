"""Reading a run config: presets and YAML files, ``base:`` inheritance, ``--set`` overrides,
and validation into the types of :mod:`pipeline.config.sections` with one error listing every bad field.

A YAML file (or shipped preset) may start from another with ``base: NAME_OR_PATH`` and state
only what differs: mappings merge key by key, lists and scalars replace the base's value, and
a ``train.student`` of another ``family`` replaces the base's student.
Bases chain (a base may have its own ``base``); a relative base path resolves against the
folder of the file that names it, and so does a relative ``data.root`` (overrides and mappings:
the working directory). Unknown keys and wrong types fail before any work with a
:class:`~core.errors.ConfigError` that names, for a misspelled key, the closest valid one
(torchtune/STYLE.md convention).
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from core.errors import ConfigError
from pipeline.config.rules import config_problems, problems_message, raise_problems, task_conflicts
from pipeline.config.sections import MultiTaskRunConfig, RunConfig

PRESET_PACKAGE = "pipeline.config.presets"

BASE_KEY = "base"
"""Top-level key naming the preset or YAML file a config extends."""

SECRET_WORDS = frozenset({"key", "apikey", "token", "password", "passwd", "secret", "credential", "credentials"})
"""Words of a config key (split at ``_``, ``-`` and ``.``) that mark its value as a secret (:func:`redact`)."""
REDACTED = "<redacted>"
URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")
"""The ``user:password@`` of a URL such as ``ray://user:pass@head:10001``."""


def preset_names() -> list[str]:
    """Names of the presets shipped inside the package (``distill run NAME``)."""
    files = resources.files(PRESET_PACKAGE).iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def load_config(source: str | Path | Mapping[str, Any],
                overrides: Iterable[str] | Mapping[str, Any] = ()) -> RunConfig | MultiTaskRunConfig:
    """Load a preset name, a YAML file or a mapping (a parsed YAML file, e.g. a dict built in a
    notebook), merge it onto its ``base`` chain, apply ``a.b=value`` overrides, and validate.

    A mapping with a top-level ``tasks`` key is a :class:`MultiTaskRunConfig`, any other a
    :class:`RunConfig`.

    Args:
        source: a preset name (see :func:`preset_names`), a path to a YAML file, or a mapping
            validated as that file's content would be (its relative ``base`` resolves against
            the working directory; the mapping is not modified).
        overrides: ``dotted.key=value`` strings, values parsed as YAML scalars; or a mapping
            ``{"dotted.key": value}`` whose values are taken as they are. They apply after the
            bases are merged.

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: the file is missing or not YAML, a ``base`` is unknown or part of a cycle,
            an override is malformed, a field is unknown or of the wrong type (every such field
            is listed), settings do not fit ``data.task`` (a sentence student on a token task;
            :func:`pipeline.config.rules.task_conflicts`), or settings conflict (every rule of
            :func:`pipeline.config.rules.config_problems` broken is listed).
    """
    raw, origin = read_with_bases(source)
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            _set_dotted(raw, str(key), value, f"override {key!r}")
    else:
        for override in overrides:
            _apply_override(raw, override)
    return validate_config(raw, origin)


def redact(value: Any, key: str = "") -> Any:
    """A copy of a config dump with the value of every secret-looking key (a word of
    :data:`SECRET_WORDS`, e.g. ``api_key``, ``hf_token``) replaced by :data:`REDACTED` and the
    credentials of URLs removed, for ``config.yaml`` and the W&B config."""
    if SECRET_WORDS.intersection(re.split(r"[_.\-]", key.lower())) and value not in (None, ""):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return URL_CREDENTIALS.sub(f"{REDACTED}@", value) if isinstance(value, str) else value


def validate_config(raw: dict[str, Any], origin: str = "config") -> RunConfig | MultiTaskRunConfig:
    """Validate a parsed config mapping, then check the rules between its fields that need no
    file (:mod:`pipeline.config.rules`); see :func:`load_config` for the errors raised."""
    root = MultiTaskRunConfig if "tasks" in raw else RunConfig
    try:
        cfg = root.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(problems_message(origin, [_describe(err, root) for err in exc.errors()],
                                           "invalid field(s)")) from None
    lines = task_conflicts(cfg) if isinstance(cfg, RunConfig) else []
    if lines:
        raise ConfigError(problems_message(origin, lines, f"setting(s) do not fit data.task {cfg.data.task}"))
    raise_problems(config_problems(cfg), origin)
    return cfg


def read_with_bases(source: str | Path | Mapping[str, Any], relative_to: Path | None = None,
                    chain: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    """The mapping of ``source`` merged onto those of its ``base`` chain, without the ``base`` key.

    Args:
        source: a preset name or a YAML path.
        relative_to: folder a relative YAML path resolves against (the naming file's); None for
            the working directory.
        chain: origins of the files that led here, for cycle detection.

    Returns:
        ``(mapping, origin)``, origin naming ``source`` as error messages show it.

    Raises:
        ConfigError: a file is missing or not a YAML mapping, ``base`` is not a string, or the
            chain comes back to a file already in it.
    """
    raw, origin, folder = _read_source(source, relative_to)
    if folder is not None:
        _anchor_data_root(raw, folder)
    if origin in chain:
        raise ConfigError(f"the base chain makes a cycle ({' -> '.join((*chain, origin))}); remove one of "
                          f"these base keys")
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return raw, origin
    if not isinstance(base, str):
        raise ConfigError(f"{origin}: base must be a preset name or a YAML path, got {base!r}")
    try:
        base_raw, _ = read_with_bases(base, folder, (*chain, origin))
    except ConfigError as exc:
        raise ConfigError(f"{origin}: base {base!r}: {exc}") from None
    return merge_config(base_raw, raw), origin


def merge_config(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` laid over ``base``: mappings merge recursively, lists and scalars replace.

    A mapping whose ``family`` differs from the base's (another student type, which shares no
    fields with it) replaces the base's mapping too. Neither argument is modified.
    """
    merged = dict(base)
    for key, value in update.items():
        old = merged.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and value.get("family", old.get("family")) == \
                old.get("family"):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_source(source: str | Path | Mapping[str, Any],
                 relative_to: Path | None) -> tuple[dict[str, Any], str, Path | None]:
    """``(mapping, origin, folder its relative bases resolve against)`` of one preset, file or
    mapping (a deep copy, which merging and overrides may change)."""
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source)), "config mapping", None
    path = Path(source)
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    if not Path(source).suffix and str(source) in preset_names():
        text = resources.files(PRESET_PACKAGE).joinpath(f"{source}.yaml").read_text()
        origin, folder = f"preset {source!r}", None
    elif path.is_file():
        text = path.read_text(encoding="utf-8")
        origin, folder = str(path), path.parent
    else:
        raise ConfigError(f"{source}: no such config file or preset; presets are {preset_names()}")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{origin}: not valid YAML ({where}{problem}); fix the file") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections at the top level")
    return raw, origin, folder


def _anchor_data_root(raw: dict[str, Any], folder: Path) -> None:
    """Make a YAML file's relative ``data.root`` relative to the file's ``folder`` instead of the
    working directory, so a config and its data folder move together."""
    data = raw.get("data")
    root = data.get("root") if isinstance(data, dict) else None
    if isinstance(root, str) and not Path(root).expanduser().is_absolute():
        data["root"] = str(folder / root)


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected dotted.key=value, e.g. train.epochs=3")
    _set_dotted(raw, key, yaml.safe_load(value), f"override {override!r}")


def _set_dotted(raw: dict[str, Any], key: str, value: Any, what: str) -> None:
    """Set ``raw[a][b]... = value`` for ``key`` ``"a.b..."``, making missing sections; ConfigError
    naming ``what`` when a part on the way is not a section."""
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{what}: {part} is not a section")
    node[leaf] = value


def _describe(err: dict[str, Any], root: type[BaseModel]) -> str:
    loc = _field_path(err["loc"], root) or "config"
    if err["type"] == "extra_forbidden":
        parent = _model_at(err["loc"][:-1], root)
        field = str(err["loc"][-1])
        known = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(field, known, n=1)
        hint = f"; did you mean {_field_path(err['loc'][:-1], root)}.{close[0]}?" if close else ""
        return f"{loc} is not a field{hint} (fields: {', '.join(known)})"
    got = "" if isinstance(err.get("input"), dict) else f" (got {err.get('input')!r})"  # a section: too long
    return f"{loc}: {err['msg']}{got}"


def _field_path(loc: tuple, root: type[BaseModel]) -> str:
    """The dotted config path of an error location, without the tags of tagged unions."""
    parts, model = [], root
    for part in loc:
        if isinstance(model, _Union) and model.by_tag(str(part)) is not None:
            model = model.by_tag(str(part))
            continue
        parts.append(str(part))
        model = _field_model(model, part)
    return ".".join(parts)


def _model_at(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        model = model.by_tag(str(part)) if isinstance(model, _Union) else _field_model(model, part)
    return None if isinstance(model, _Union) else model


def _field_model(model: Any, part: Any) -> Any:
    """The config model (or :class:`_Union` of models) of field ``part`` of ``model``, else None."""
    if model is None or isinstance(model, _Union) or str(part) not in model.model_fields:
        return None
    choices = _nested_models(model.model_fields[str(part)].annotation)
    return choices[0] if len(choices) == 1 else (_Union(choices) if choices else None)


class _Union:
    """The models of a tagged union (``train.student``), looked up by their ``family`` tag."""

    def __init__(self, models: list[type[BaseModel]]):
        self.models = models

    def by_tag(self, tag: str) -> type[BaseModel] | None:
        return next((m for m in self.models if _family(m) == tag), None)


def _family(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("family")
    return field.default if field is not None else None


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    """The config models inside an annotation (through Optional, unions and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()):
        found += _nested_models(arg)
    return found
