"""The subset of Nomad's template language (consul-template on Go's ``text/template``) that
joblife's rendered specs use, to know what a task's ``template`` block would put in its
environment: ``with nomadVar "<path>"``, ``range $key, $value := .``, ``if`` / ``else if``
/ ``else`` / ``end``, the conditions ``eq $key "a" "b"...`` (true if equal to any),
``not (...)`` and ``true``, the outputs ``$value``, ``$value.Value | toJSON`` and
``$key | toUpper``, and the ``{{-`` / ``-}}`` whitespace trimming. Anything else raises
:class:`TemplateError`, so a spec that starts using more fails its tests instead of being
misread. An env template's output is read as Nomad reads it, with go-envparse
(:mod:`tests.support.nomad_envfile`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from tests.support.nomad_envfile import EnvParseError, parse_env, to_json

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)


class TemplateError(Exception):
    """The template uses something this subset does not know."""


@dataclass
class _Node:
    kind: str  # text, output, with, range, if
    value: str = ""
    body: list[_Node] = field(default_factory=list)
    #: if: (condition, body) per branch, a None condition for ``else``.
    branches: list[tuple[str | None, list[_Node]]] = field(default_factory=list)


def render_template(text: str, variables: Mapping[str, Mapping[str, str]]) -> str:
    """``text`` rendered with the Nomad variables ``variables`` (path -> items)."""
    nodes, _ = _parse(_tokens(text), top=True)
    return "".join(_render(nodes, variables, {}))


@dataclass(frozen=True)
class _Item:
    """A Nomad variable's item as ``range`` binds it (consul-template's NomadVarItem):
    printed, its value; ``.Value``, its value as a string."""

    value: str

    def __str__(self) -> str:
        return self.value


def template_environment(text: str, variables: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The environment an ``env = true`` template gives its task: its output read as Nomad
    reads it (go-envparse: quotes, escapes, comments; a variable with an empty value is
    left out)."""
    try:
        return parse_env(render_template(text, variables))
    except EnvParseError as error:
        raise TemplateError(f"Nomad cannot read the rendered environment: {error}") from None


def _tokens(text: str) -> list[tuple[str, str]]:
    """("text", ...) and ("action", ...) tokens, whitespace trimmed as Go trims it."""
    tokens: list[tuple[str, str]] = []
    position, trim_next = 0, False
    for match in _ACTION.finditer(text):
        before = text[position : match.start()]
        if trim_next:
            before = before.lstrip()
        if match.group(1):
            before = before.rstrip()
        tokens.append(("text", before))
        tokens.append(("action", match.group(2).strip()))
        position, trim_next = match.end(), bool(match.group(3))
    tail = text[position:]
    tokens.append(("text", tail.lstrip() if trim_next else tail))
    return tokens


def _parse(tokens: list[tuple[str, str]], top: bool = False) -> tuple[list[_Node], str | None]:
    """Nodes until the ``end`` / ``else ...`` that closes this level (consumed from
    ``tokens`` and returned); at the top level, until the end of the tokens."""
    nodes: list[_Node] = []
    while tokens:
        kind, value = tokens.pop(0)
        if kind == "text":
            if value:
                nodes.append(_Node("text", value))
            continue
        if value == "end" or value == "else" or value.startswith("else if "):
            if top:
                raise TemplateError(f"unexpected {{{{ {value} }}}}")
            return nodes, value
        if value.startswith("with ") or value.startswith("range "):
            body, closing = _parse(tokens)
            if closing != "end":
                raise TemplateError(f"{value!r} closed by {closing!r}")
            nodes.append(_Node(value.split()[0], value, body))
        elif value.startswith("if "):
            node, condition = _Node("if"), value[3:]
            while True:
                body, closing = _parse(tokens)
                node.branches.append((condition, body))
                if closing == "end":
                    break
                if closing == "else":
                    condition = None
                elif closing is not None and closing.startswith("else if "):
                    condition = closing[len("else if ") :]
                else:
                    raise TemplateError(f"if closed by {closing!r}")
            nodes.append(node)
        else:
            nodes.append(_Node("output", value))
    if not top:
        raise TemplateError("missing {{ end }}")
    return nodes, None


def _render(
    nodes: list[_Node], variables: Mapping[str, Mapping[str, str]], scope: dict[str, object]
) -> list[str]:
    out: list[str] = []
    for node in nodes:
        if node.kind == "text":
            out.append(node.value)
        elif node.kind == "with":
            match = re.fullmatch(r'with nomadVar "([^"]+)"', node.value)
            if not match:
                raise TemplateError(f"unknown {node.value!r}")
            items = variables.get(match.group(1))
            if items:  # a missing or empty variable: the block renders nothing
                out += _render(node.body, variables, {**scope, ".": dict(items)})
        elif node.kind == "range":
            match = re.fullmatch(r"range \$(\w+), \$(\w+) := \.", node.value)
            if not match:
                raise TemplateError(f"unknown {node.value!r}")
            items = scope.get(".")
            if not isinstance(items, dict):
                raise TemplateError("range outside a with block")
            for key in sorted(items):  # Go ranges over a map in key order
                inner = {**scope, match.group(1): key, match.group(2): _Item(items[key])}
                out += _render(node.body, variables, inner)
        elif node.kind == "if":
            for condition, body in node.branches:
                if condition is None or _condition(condition, scope):
                    out += _render(body, variables, scope)
                    break
        else:
            out.append(_output(node.value, scope))
    return out


def _condition(text: str, scope: Mapping[str, object]) -> bool:
    text = text.strip()
    if text == "true":
        return True
    negated = re.fullmatch(r"not \((.*)\)", text)
    if negated:
        return not _condition(negated.group(1), scope)
    equal = re.fullmatch(r'eq \$(\w+)((?: "[^"]*")+)', text)
    if equal:
        return _variable(equal.group(1), scope) in re.findall(r'"([^"]*)"', equal.group(2))
    raise TemplateError(f"unknown condition {text!r}")


def _output(text: str, scope: Mapping[str, object]) -> str:
    match = re.fullmatch(r"\$(\w+)(\.Value)?(?: \| (toUpper|toJSON))?", text)
    if not match:
        raise TemplateError(f"unknown action {text!r}")
    name, field_access, function = match.groups()
    if name not in scope:
        raise TemplateError(f"undefined variable ${name}")
    value = scope[name]
    if field_access:
        if not isinstance(value, _Item):
            raise TemplateError(f"${name} has no field Value")
        value = value.value
    if function and not isinstance(value, str):
        # toUpper takes a string; toJSON of an item goes through its MarshalJSON, Go's %q,
        # not JSON for every value: the spec must write $value.Value | toJSON.
        raise TemplateError(f"{function} of a Nomad variable item: use ${name}.Value")
    if function == "toUpper":
        return value.upper()
    if function == "toJSON":
        return to_json(value)
    return str(value)


def _variable(name: str, scope: Mapping[str, object]) -> str:
    if name not in scope:
        raise TemplateError(f"undefined variable ${name}")
    return str(scope[name])
