"""Read YAML into plain data while keeping the line of every key, and expand `$VAR` in values.

`$VAR` and `${VAR}` expand in string values only: never in keys, and never in comments,
which the YAML parser drops before expansion. `$$` is a literal `$`. agentgateway expands
the whole file text instead (comments included), so a `$` in a comment that breaks
agentgateway does not break meterway.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

ConfigPath = tuple[str | int, ...]

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_VARIABLE = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
# Variables whose values are treated as secrets wherever they are used.
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


@dataclass
class YamlDocument:
    """A parsed file: plain data plus what the loader needs to report problems."""

    data: Any = None
    # 1-based line of each mapping key and sequence item, by path.
    lines: dict[ConfigPath, int] = field(default_factory=dict)
    # Paths whose value came from a `$VAR`: their values are never shown in messages.
    expanded: set[ConfigPath] = field(default_factory=set)
    # Values of expanded variables whose names look secret (`*_KEY`, `*TOKEN*`, ...).
    secret_values: set[str] = field(default_factory=set)
    # (path, line, message) for missing variables, duplicate keys and odd keys.
    problems: list[tuple[ConfigPath, int, str]] = field(default_factory=list)


def read_yaml(text: str, environ: Mapping[str, str]) -> YamlDocument:
    """Parse one YAML document with line numbers and `$VAR` expansion.

    Raises yaml.YAMLError for text that is not valid YAML (or holds several documents).
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        document = YamlDocument()
        if root is not None:
            document.data = _Builder(loader, environ, document).build(root, ())
        return document
    finally:
        loader.dispose()


class _Builder:
    def __init__(self, loader: yaml.SafeLoader, environ: Mapping[str, str], document: YamlDocument):
        self.loader = loader
        self.environ = environ
        self.document = document

    def build(self, node: Node, path: ConfigPath) -> Any:
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        if isinstance(node, SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                self.document.lines[path + (index,)] = item.start_mark.line + 1
                items.append(self.build(item, path + (index,)))
            return items
        assert isinstance(node, ScalarNode)
        if node.tag == _STR_TAG:
            return self._expand(node.value, path, node.start_mark.line + 1)
        return self.loader.construct_object(node, deep=True)

    def _mapping(self, node: MappingNode, path: ConfigPath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                merged.update(self._merge_source(value_node, path))
                continue
            if not isinstance(key_node, ScalarNode):
                self.document.problems.append((path, line, "a key must be a plain string"))
                continue
            # Keys are taken as written: never expanded, never read as numbers or booleans.
            key = key_node.value
            if key in result:
                self.document.problems.append(
                    (path + (key,), line, f"duplicate key `{key}`; keep one")
                )
            self.document.lines[path + (key,)] = line
            result[key] = self.build(value_node, path + (key,))
        # Keys written in the mapping win over keys merged in with `<<`.
        return {**merged, **result}

    def _merge_source(self, node: Node, path: ConfigPath) -> dict[str, Any]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        merged: dict[str, Any] = {}
        for source in reversed(sources):
            value = self.build(source, path)
            if isinstance(value, dict):
                merged.update(value)
        return merged

    def _expand(self, value: str, path: ConfigPath, line: int) -> str:
        if "$" not in value:
            return value

        def substitute(match: re.Match[str]) -> str:
            if match.group(1):
                return "$"
            name = match.group(2) or match.group(3)
            if name not in self.environ:
                self.document.problems.append(
                    (path, line, f"environment variable `{name}` is not set; set it before "
                     "starting meterway (write `$$` for a literal `$`)")
                )
                return ""
            self.document.expanded.add(path)
            if _SECRET_NAME.search(name) and self.environ[name]:
                self.document.secret_values.add(self.environ[name])
            return self.environ[name]

        return _VARIABLE.sub(substitute, value)
