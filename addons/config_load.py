"""Load and check an agentgateway-format config file: `load_config(path) -> Gateway`.

Every problem becomes one line `FILE:LINE: key.path: what is wrong; the fix`, collected in
`ConfigError.problems`, so `meterway check` can print them all at once.
"""

from __future__ import annotations

import difflib
import logging
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel

from addons.config_model import Gateway
from addons.config_support import secret_files, secret_strings, unsupported_problems
from addons.config_yaml import ConfigPath, YamlDocument, read_yaml

logger = logging.getLogger(__name__)


class ConfigError(Exception):
    """A config file that meterway cannot use; `problems` holds one readable line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Gateway:
    """Read, expand and validate the config file at `path`.

    `environ` supplies `$VAR` values (default: the process environment). Raises ConfigError
    listing every problem: invalid YAML, missing variables, unknown keys, invalid values,
    and agentgateway fields that meterway does not implement yet.
    """
    path = Path(path)
    environ = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found; pass the path of an agentgateway config file"])
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([f"{path}: cannot read the file: {error}"])

    try:
        document = read_yaml(text, environ)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError([f"{path}:{line}: invalid YAML: {error.problem or error.context}"])
    except yaml.YAMLError as error:
        raise ConfigError([f"{path}: invalid YAML: {error}"])
    if not isinstance(document.data, dict):
        raise ConfigError([f"{path}:1: the file must be a YAML mapping with keys such as `binds:`"])

    problems = [_format(path, document, p, message, line) for p, line, message in document.problems]
    # A value left empty by a missing variable would only add a confusing follow-up error.
    missing = {p for p, _line, _message in document.problems}
    try:
        gateway = Gateway.model_validate(document.data, by_alias=True, by_name=False)
    except ValidationError as error:
        problems.extend(_validation_problems(path, document, error, missing))
        raise ConfigError(problems)
    found = sorted(unsupported_problems(gateway), key=lambda p: _line_of(document, p[0]))
    problems.extend(_format(path, document, config_path, message) for config_path, message in found)

    gateway._source = path.resolve()
    secrets = secret_strings(gateway) | document.secret_values
    for config_path, file in secret_files(gateway):
        secret_path = gateway.resolve_path(file)
        try:
            secret = secret_path.read_text(encoding="utf-8").strip()
        except OSError as error:
            message = f"cannot read secret file {secret_path}: {error.strerror}; fix the path"
            problems.append(_format(path, document, config_path, message))
            continue
        gateway._file_secrets[secret_path] = secret
        secrets.add(secret)
    if problems:
        raise ConfigError(problems)

    gateway._secret_values = frozenset(s for s in secrets if s)
    logger.info(
        "loaded config %s: %d bind(s) on ports %s, llm proxy %s",
        path, len(gateway.binds), gateway.listener_ports(), gateway.llm_port() or "off",
    )
    return gateway


def _format(file: Path, document: YamlDocument, path: ConfigPath, message: str,
            line: int | None = None) -> str:
    if line is None:
        line = _line_of(document, path)
    where = format_path(path) or "(top level)"
    return f"{file}:{line}: {where}: {message}"


def format_path(path: ConfigPath) -> str:
    """Format a key path as `binds[0].listeners[0].routes[2].backends[0].ai.provider`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _line_of(document: YamlDocument, path: ConfigPath) -> int:
    while path:
        if path in document.lines:
            return document.lines[path]
        path = path[:-1]
    return 1


def _validation_problems(file: Path, document: YamlDocument, error: ValidationError,
                         skip: set[ConfigPath]) -> list[str]:
    by_path: dict[ConfigPath, list[str]] = {}
    for item in error.errors(include_url=False):
        path = _data_path(item["loc"], document.data, item["type"])
        if path in skip:
            continue
        by_path.setdefault(path, [])
        message = _message(item, path, document)
        if message not in by_path[path]:
            by_path[path].append(message)

    # A union (for example `key: str | {value, location}`) reports one error per member.
    # When one member got further into the data, its errors are the useful ones.
    problems: list[tuple[int, str]] = []
    for path, messages in by_path.items():
        deeper = any(len(other) > len(path) and other[: len(path)] == path for other in by_path)
        if deeper and all(not m.startswith("unknown key") for m in messages):
            continue
        line = _line_of(document, path)
        problems.append((line, _format(file, document, path, "; or ".join(messages), line)))
    return [text for _line, text in sorted(problems, key=lambda p: p[0])]


def _data_path(loc: tuple[int | str, ...], data: Any, kind: str) -> ConfigPath:
    """Map pydantic's error location onto the keys present in the data, dropping the names of
    union members that pydantic inserts."""
    path: list[str | int] = []
    current = data
    for index, part in enumerate(loc):
        if isinstance(current, dict) and isinstance(part, str) and part in current:
            current = current[part]
            path.append(part)
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
            path.append(part)
        elif index == len(loc) - 1 and kind in ("missing", "extra_forbidden"):
            path.append(part)  # the missing or unknown key itself
    return tuple(path)


def _message(item: Any, path: ConfigPath, document: YamlDocument) -> str:
    kind = item["type"]
    if kind == "extra_forbidden":
        return _unknown_key_message(path)
    if kind == "missing":
        return f"missing required key `{path[-1]}`" if path else "missing required key"
    message = str(item["msg"]).removeprefix("Value error, ")
    value = item.get("input")
    shown = path not in document.expanded and isinstance(value, (str, int, float, bool))
    return f"{message} (got {value!r})" if shown else message


def _unknown_key_message(path: ConfigPath) -> str:
    key = str(path[-1])
    models = _models_at(path[:-1])
    allowed = sorted({f.alias or n for m in models for n, f in m.model_fields.items()})
    head = f"unknown key `{key}`"

    home = _home_of(key, models)
    if home:
        return f"{head}: `{key}` belongs under `{home}:`"
    if "_" in key and to_camel(key) in allowed:
        return f"{head}: agentgateway's keys are camelCase; write `{to_camel(key)}`"
    same_letters = [a for a in allowed if a.lower() == key.lower()]
    if same_letters:
        return f"{head}: keys are case-sensitive; write `{same_letters[0]}`"
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.7)
    if close:
        return f"{head}: did you mean `{close[0]}`?"
    if allowed:
        return f"{head}; expected one of: {', '.join(allowed)}"
    return f"{head}; remove it"


def _home_of(key: str, models: list[type[BaseModel]]) -> str | None:
    """Return where `key` belongs when it is a key of a section nested one or two levels
    below `models`, for example top-level `database` -> `config`."""
    for depth in (1, 2):
        for model in models:
            for prefix, child in _children(model, depth):
                if key in {f.alias or n for n, f in child.model_fields.items()}:
                    return prefix
    return None


def _children(model: type[BaseModel], depth: int) -> list[tuple[str, type[BaseModel]]]:
    found = []
    for name, field in model.model_fields.items():
        alias = field.alias or name
        for child in _model_types(field.annotation):
            if depth == 1:
                found.append((alias, child))
            else:
                found.extend((f"{alias}.{p}", c) for p, c in _children(child, depth - 1))
    return found


def _models_at(path: ConfigPath) -> list[type[BaseModel]]:
    models: list[type[BaseModel]] = [Gateway]
    for part in path:
        if isinstance(part, int):
            continue
        next_models: list[type[BaseModel]] = []
        for model in models:
            for name, field in model.model_fields.items():
                if (field.alias or name) == part:
                    next_models.extend(_model_types(field.annotation))
        models = next_models
    return models


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    """Return the model classes inside a field type (through Optional, unions, lists, dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for argument in typing.get_args(annotation):
        found.extend(_model_types(argument))
    return found
