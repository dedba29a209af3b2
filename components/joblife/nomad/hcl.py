"""A small HCL2 writer: the subset Nomad job specs and agent configurations use.

A document is a list of :class:`Block`; a block's body holds attributes (``name = value``)
and nested blocks, in order. Values are strings (``${...}`` kept as HCL interpolation,
multi-line strings written as heredocs), numbers, booleans, lists and maps.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

INDENT = "  "


@dataclass
class Block:
    """``type "label" ... { body }``; ``body`` items are ``(name, value)`` pairs or blocks."""

    type: str
    labels: tuple[str, ...] = ()
    body: list[tuple[str, Any] | Block] = field(default_factory=list)

    def attr(self, name: str, value: Any) -> Block:
        """Add ``name = value`` (skipped when value is None); return self."""
        if value is not None:
            self.body.append((name, value))
        return self

    def block(self, type_: str, *labels: str) -> Block:
        """Add and return a nested block."""
        child = Block(type_, labels)
        self.body.append(child)
        return child


def render(blocks: Iterable[Block], header: Sequence[str] = ()) -> str:
    """The HCL text of ``blocks``, preceded by ``header`` lines as comments."""
    lines = [f"# {line}".rstrip() for line in header]
    if lines:
        lines.append("")
    for index, block in enumerate(blocks):
        if index:
            lines.append("")
        lines.extend(_block(block, 0))
    return "\n".join(lines) + "\n"


def _block(block: Block, depth: int) -> list[str]:
    pad = INDENT * depth
    head = " ".join([block.type, *(_string(label) for label in block.labels)])
    lines = [f"{pad}{head} {{"]
    for index, item in enumerate(block.body):
        if isinstance(item, Block):
            if len(lines) > 1:
                lines.append("")
            lines.extend(_block(item, depth + 1))
            continue
        if index and isinstance(block.body[index - 1], Block):
            lines.append("")
        name, value = item
        lines.extend(_attribute(name.ljust(_run_width(block.body, index)), value, depth + 1))
    lines.append(f"{pad}}}")
    return lines


def _run_width(body: list[tuple[str, Any] | Block], index: int) -> int:
    """The width of the longest name in the run of attributes ``body[index]`` is in
    (``=`` signs aligned as ``nomad fmt`` does)."""
    start = index
    while start > 0 and isinstance(body[start - 1], tuple):
        start -= 1
    end = index
    while end + 1 < len(body) and isinstance(body[end + 1], tuple):
        end += 1
    return max(len(item[0]) for item in body[start : end + 1])  # type: ignore[index]


def _attribute(name: str, value: Any, depth: int) -> list[str]:
    pad = INDENT * depth
    if isinstance(value, str) and "\n" in value:
        # ``<<-`` strips the common indentation: the text stays aligned with the spec.
        inner = INDENT * (depth + 1)
        content = [f"{inner}{line}" if line else "" for line in value.rstrip("\n").split("\n")]
        return [f"{pad}{name} = <<-EOT", *content, f"{inner}EOT"]
    if isinstance(value, Mapping):
        lines = [f"{pad}{name.rstrip()} = {{"]
        width = max((len(str(k)) for k in value), default=0)
        for key, item in value.items():
            lines.append(f"{pad}{INDENT}{str(key).ljust(width)} = {_value(item)}")
        lines.append(f"{pad}}}")
        return lines
    return [f"{pad}{name} = {_value(value)}"]


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"no HCL form for {type(value).__name__} {value!r}")


def _string(value: str) -> str:
    # JSON escaping is HCL's for quotes, backslashes and control characters; ``${`` stays
    # an interpolation on purpose (``${NOMAD_META_job_id}``, ``${node.class}``).
    return json.dumps(value, ensure_ascii=False)
