"""Label and field selectors, as the Kubernetes API parses them. Pure: no I/O.

Label selectors: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, comma-joined (AND).
Field selectors: `path=value`, `path==value`, `path!=value` over dotted paths (`metadata.name`,
`spec.nodeName`, `status.phase`, `involvedObject.uid`, ...). Unlike a real API server, any dotted path
is accepted; a missing field compares as the empty string, as the real server does for the fields it
supports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_SET_EXPR = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_KEY = re.compile(r"^[A-Za-z0-9_./-]+$")


class SelectorError(ValueError):
    """A selector string that cannot be parsed (the API answers 400)."""


@dataclass(frozen=True, slots=True)
class Requirement:
    """One clause of a selector."""

    key: str
    """Label key or dotted field path."""
    op: str
    """One of `=`, `!=`, `in`, `notin`, `exists`, `!exists`."""
    values: tuple[str, ...] = ()
    """Values for `=`/`!=` (one) and `in`/`notin` (any number)."""

    def matches(self, value: str | None) -> bool:
        """Whether a (possibly absent) value satisfies this clause."""
        if self.op == "exists":
            return value is not None
        if self.op == "!exists":
            return value is None
        if self.op in {"=", "in"}:
            return value is not None and value in self.values
        # `!=` and `notin` also match objects without the key, as in Kubernetes.
        return value is None or value not in self.values


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(text: str | None) -> tuple[Requirement, ...]:
    """Parse a label selector string; empty or None selects everything."""
    if not text:
        return ()
    reqs: list[Requirement] = []
    for clause in _split_top_level(text):
        set_match = _SET_EXPR.match(clause)
        if set_match:
            key, op, raw = set_match.groups()
            values = tuple(v.strip() for v in raw.split(",") if v.strip())
            reqs.append(Requirement(key, op, values))
            continue
        reqs.append(_parse_equality(clause, allow_exists=True))
    return tuple(reqs)


def parse_field_selector(text: str | None) -> tuple[Requirement, ...]:
    """Parse a field selector string (only equality clauses exist for fields)."""
    if not text:
        return ()
    return tuple(_parse_equality(c, allow_exists=False) for c in _split_top_level(text))


def _parse_equality(clause: str, *, allow_exists: bool) -> Requirement:
    for op in ("!=", "==", "="):
        if op in clause:
            key, _, value = clause.partition(op)
            key, value = key.strip(), value.strip()
            if not _KEY.match(key):
                raise SelectorError(f"invalid selector key {key!r} in {clause!r}")
            return Requirement(key, "!=" if op == "!=" else "=", (value,))
    if allow_exists:
        negated = clause.startswith("!")
        key = clause[1:].strip() if negated else clause
        if _KEY.match(key):
            return Requirement(key, "!exists" if negated else "exists")
    raise SelectorError(f"unable to parse requirement: {clause!r}")


def labels_match(reqs: tuple[Requirement, ...], labels: dict[str, str] | None) -> bool:
    """Whether a label map satisfies every requirement."""
    labels = labels or {}
    return all(r.matches(labels.get(r.key)) for r in reqs)


def field_value(obj: dict[str, Any], path: str) -> str:
    """The string form of a dotted field path of an object ('' when absent)."""
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, dict):
            return ""
        node = node.get(part)
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def fields_match(reqs: tuple[Requirement, ...], obj: dict[str, Any]) -> bool:
    """Whether an object satisfies every field requirement."""
    return all(r.matches(field_value(obj, r.key)) for r in reqs)


def match_label_selector_object(selector: dict[str, Any] | None, labels: dict[str, str] | None) -> bool:
    """Evaluate a structured `LabelSelector` (matchLabels + matchExpressions); None/{} selects all."""
    if not selector:
        return True
    labels = labels or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
    for expr in selector.get("matchExpressions") or []:
        op = ops.get(expr.get("operator", ""))
        if op is None:
            raise SelectorError(f"unknown label selector operator {expr.get('operator')!r}")
        req = Requirement(expr["key"], op, tuple(expr.get("values") or ()))
        if not req.matches(labels.get(expr["key"])):
            return False
    return True
