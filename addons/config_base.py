"""The base class and small shared types of the config models.

Every model reads agentgateway's camelCase keys and rejects unknown ones, as agentgateway
does. Python code may also build models with the snake_case attribute names.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ConfigModel(BaseModel):
    """A config section: camelCase keys in YAML, snake_case attributes, unknown keys rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=False,
    )


# A subtree that meterway does not implement yet. It is kept as plain data: the loader
# rejects it as unsupported before anything reads it, so its inner shape is not modelled.
Opaque = dict[str, Any]


class FileRef(ConfigModel):
    """A value read from a file, `{file: PATH}`; the path is relative to the config file."""

    file: str


def exactly_one(model: BaseModel, names: tuple[str, ...], what: str) -> None:
    """Raise ValueError unless exactly one of the attributes `names` of `model` is set."""
    set_names = [n for n in names if getattr(model, n) is not None]
    if len(set_names) == 1:
        return
    aliases = [type(model).model_fields[n].alias or n for n in names]
    listed = ", ".join(f"`{a}`" for a in aliases)
    raise ValueError(f"set exactly one of {listed} in `{what}`")
