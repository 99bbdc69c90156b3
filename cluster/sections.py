"""The base of every config section (cluster/config.py aggregates them; cluster/responses and cluster/tools hold
their own): strict pydantic models whose fields carry a default, their documentation and their range."""

from pydantic import BaseModel, ConfigDict, Field


class ConfigError(ValueError):
    """A config value that is missing, of the wrong type or out of range; the message names the field path."""


class Section(BaseModel):
    """A config section: unknown keys, wrong types (no silent coercion: "8" is not 8, true is not 1) and
    out-of-range values fail, naming the field."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, validate_assignment=True)


def doc(default, text: str, **constraints):
    """A field with its default, its documentation and its range (ge, gt, le, lt, min_length, ...)."""
    if isinstance(default, (list, dict)):
        return Field(default_factory=lambda d=default: type(d)(d), description=text, **constraints)
    if isinstance(default, type) and issubclass(default, BaseModel):
        return Field(default_factory=default, description=text, **constraints)
    return Field(default, description=text, **constraints)
