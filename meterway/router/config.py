"""The router's YAML config: pydantic models, loading, and readable errors.

Keys are camelCase in YAML (`autoModels`, `apiKey`) and snake_case in Python. Unknown keys
are rejected, and every problem is reported with the file, line, key path and a fix.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from meterway.router.yaml_lines import KeyPath, line_index

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_HEADER = "x-selected-model"
DEFAULT_AUTO_MODELS = ["MoM", "auto", "vllm-sr/auto"]

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class RouterConfigError(Exception):
    """Raised when a router config file cannot be read or is invalid.

    `problems` contains one readable line per problem: file:line, key path, what is wrong, the fix.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid router config:\n" + "\n".join(f"  {p}" for p in self.problems))


class _Model(BaseModel):
    # YAML keys are camelCase only, so `auto_models:` is reported with its camelCase fix.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=False, extra="forbid")


class EmbeddingsConfig(_Model):
    """An OpenAI-compatible embeddings endpoint that the user runs, for example Ollama."""

    url: str
    model: str
    threshold: float = Field(default=0.75, ge=-1.0, le=1.0)
    timeout: float = Field(default=2.0, gt=0, description="Seconds per embeddings request.")
    api_key: SecretStr | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http:// or https:// URL; write e.g. http://127.0.0.1:11434/v1/embeddings")
        return value


class RouteConfig(_Model):
    """One route: the model it selects and the rules and examples that select it."""

    name: str
    model: str
    keywords: list[str] = []
    regex: list[str] = []
    examples: list[str] = []
    priority: int = 0

    @field_validator("keywords", "examples")
    @classmethod
    def _no_blank(cls, values: list[str]) -> list[str]:
        for value in values:
            if not value.strip():
                raise ValueError("contains an empty string; remove it")
        return values

    @field_validator("regex")
    @classmethod
    def _compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"pattern {pattern!r} is not a valid Python regular expression: {error}") from None
        return patterns


class RouterConfig(_Model):
    """The whole router config file."""

    listen: str = DEFAULT_LISTEN
    header: str = DEFAULT_HEADER
    auto_models: list[str] = Field(default_factory=lambda: list(DEFAULT_AUTO_MODELS))
    default: str | None = None
    rewrite_model: bool = True
    routes: list[RouteConfig] = []
    embeddings: EmbeddingsConfig | None = None
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        split_listen(value)
        return value

    @field_validator("header")
    @classmethod
    def _check_header(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9!#$%&'*+.^_`|~-]+", value):
            raise ValueError(f"{value!r} is not a lowercase HTTP header name; write e.g. x-selected-model")
        return value

    @model_validator(mode="after")
    def _check_routes(self) -> RouterConfig:
        seen: set[str] = set()
        for route in self.routes:
            if route.name in seen:
                raise ValueError(f"route name {route.name!r} is used twice; give each route its own name")
            seen.add(route.name)
        return self

    def route_models(self) -> list[str]:
        """Return the distinct models of the routes and the default, in config order."""
        models = [route.model for route in self.routes]
        if self.default:
            models.append(self.default)
        return list(dict.fromkeys(models))


def split_listen(value: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 hosts in brackets) into host and port; raise ValueError if invalid."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT; write e.g. 127.0.0.1:50051")
    return host.strip("[]"), int(port_text)


def load_router_config(path: str | Path, environ: Mapping[str, str] | None = None) -> RouterConfig:
    """Read, expand and validate a router config file; raise RouterConfigError on any problem.

    `$VAR` and `${VAR}` expand only in `embeddings.apiKey` and `embeddings.url`: prompts in
    `examples` and patterns in `regex` may contain a literal `$`.
    """
    path = Path(path)
    environ = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise RouterConfigError([f"{path}: cannot read the file: {error.strerror}"]) from None

    try:
        data = yaml.safe_load(text)
        lines = line_index(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RouterConfigError([f"{where}: invalid YAML: {getattr(error, 'problem', error)}"]) from None

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RouterConfigError([f"{path}:1: the file must be a mapping of keys such as `routes:`, not {type(data).__name__}"])

    problems = _expand_secrets(data, environ, path, lines)
    if problems:
        raise RouterConfigError(problems)

    try:
        config = RouterConfig.model_validate(data)
    except ValidationError as error:
        raise RouterConfigError([_describe(item, path, lines, data) for item in error.errors()]) from None
    config.source = path
    return config


def _expand_secrets(data: dict[str, Any], environ: Mapping[str, str], path: Path, lines: dict[KeyPath, int]) -> list[str]:
    """Expand `$VAR` in the embeddings URL and key in place; return one problem per missing variable."""
    section = data.get("embeddings")
    if not isinstance(section, dict):
        return []
    problems = []
    for key in ("url", "apiKey"):
        value = section.get(key)
        if not isinstance(value, str):
            continue
        missing = [a or b for a, b in _VAR_RE.findall(value) if (a or b) not in environ]
        if missing:
            line = lines.get(("embeddings", key), 0)
            names = ", ".join(f"${name}" for name in missing)
            problems.append(f"{path}:{line}: embeddings.{key}: environment variable {names} is not set; export it before starting the router")
            continue
        section[key] = _VAR_RE.sub(lambda m: environ[m.group(1) or m.group(2)], value)
    return problems


def _describe(item: Mapping[str, Any], path: Path, lines: dict[KeyPath, int], data: Any) -> str:
    """Turn one pydantic error into `file:line: key.path: message; fix`."""
    loc = tuple(item["loc"])
    line = _nearest_line(loc, lines)
    dotted = _dotted(loc)
    kind = item["type"]

    if kind == "extra_forbidden":
        return f"{path}:{line}: {dotted}: unknown key; {_unknown_key_fix(loc)}"
    if kind == "missing":
        return f"{path}:{line}: {dotted}: required key is missing; add `{loc[-1]}:`"

    message = str(item["msg"]).removeprefix("Value error, ")
    value = _value_at(data, loc)
    if kind in ("string_type", "int_parsing", "int_type", "float_parsing", "float_type", "list_type", "model_type", "dict_type"):
        message = f"{message}, got {value!r}"
    return f"{path}:{line}: {dotted or '(top level)'}: {message}"


def _unknown_key_fix(loc: tuple[Any, ...]) -> str:
    """Suggest the key the user probably meant."""
    key = str(loc[-1])
    parent = loc[:-1]
    known = _known_keys(parent)
    camel = to_camel(key)
    if camel != key and camel in known:
        return f"write `{camel}` (keys are camelCase)"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"did you mean `{close[0]}`?"
    if not parent and key in ("url", "model", "threshold", "timeout", "apiKey"):
        return f"`{key}` belongs under `embeddings:`"
    if not parent and key in ("keywords", "regex", "examples", "priority", "name", "model"):
        return f"`{key}` belongs under an entry of `routes:`"
    return "remove it; allowed keys here: " + ", ".join(f"`{k}`" for k in known)


def _known_keys(parent: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = RouterConfig
    if parent and parent[0] == "routes":
        model = RouteConfig
    elif parent and parent[0] == "embeddings":
        model = EmbeddingsConfig
    return [field.alias or name for name, field in model.model_fields.items() if name != "source"]


def _nearest_line(loc: tuple[Any, ...], lines: dict[KeyPath, int]) -> int:
    """Return the line of `loc`, or of its closest parent that has one (1 for the top level)."""
    for end in range(len(loc), 0, -1):
        line = lines.get(tuple(loc[:end]))
        if line is not None:
            return line
    return 1


def _dotted(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _value_at(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    if loc and loc[-1] == "apiKey":
        return "<hidden>"
    return data
