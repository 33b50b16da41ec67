"""A "did you mean" for an unknown field: the close matches among the fields the model allows at
that place in the document."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, get_args

from pydantic import BaseModel

Path = tuple[str | int, ...]


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`; did you mean 'methods'?` for `method`, or "" when nothing is close."""
    options = sorted(set(candidates))
    folded = {option.lower(): option for option in options}
    if name.lower() in folded:  # `From` for `from`
        return f"; did you mean '{folded[name.lower()]}'?"
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.7)
    return f"; did you mean '{close[0]}'?" if close else ""


def fields_at(root: type[BaseModel], path: Path) -> set[str]:
    """The YAML names of the fields allowed in the mapping at `path` under `root` (list indexes
    and map keys are stepped through; a union contributes the fields of each of its models)."""
    models: list[type[BaseModel]] = [root]
    for part in path:
        if isinstance(part, int):
            continue
        inner: list[type[BaseModel]] = []
        for model in models:
            field = _field(model, part)
            if field is not None:
                inner += _models_in(field)
        if inner:
            models = inner
        else:  # a key of a free-form map (labels, matchLabels): stay on its value type
            continue
    return {_yaml_name(name, info) for model in models for name, info in model.model_fields.items()}


def _field(model: type[BaseModel], key: str) -> Any:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info.annotation
    return None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _yaml_name(name: str, info: Any) -> str:
    return str(info.alias or name)
