"""Line numbers of the keys in a YAML document, so config errors can point at a line."""

from __future__ import annotations

from typing import Union

import yaml

KeyPath = tuple[Union[str, int], ...]


def line_index(text: str) -> dict[KeyPath, int]:
    """Map each key path (`("routes", 0, "keywords")`) to the 1-based line where it starts.

    Mapping keys map to the line of the key itself; sequence items to the line of the item.
    """
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: dict[KeyPath, int] = {}
    if root is not None:
        _walk(root, (), lines)
    return lines


def _walk(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = path + (str(key_node.value),)
            lines[key_path] = key_node.start_mark.line + 1
            _walk(value_node, key_path, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            item_path = path + (index,)
            lines[item_path] = item.start_mark.line + 1
            _walk(item, item_path, lines)
