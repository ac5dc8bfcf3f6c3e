"""CEL, the language of CRD validation rules (`x-kubernetes-validations`), evaluated by a maintained
implementation: cel-expr-python (the Python binding of Google's cel-cpp), with the `strings`, `lists`,
`math`, `sets` and `optional` extensions. Macros (`all`, `exists`, `exists_one`, `map`, `filter`),
`matches`, type conversions, bytes, unsigned and optional syntax all work, as on kube-apiserver.

Not available: the Kubernetes-only libraries (`isSorted`, `quantity`, `url`, `ip`, `cidr`, `format`):
a rule using one fails to compile (`CelUnsupported`) and is not evaluated (the store logs a warning).
docs/architecture.md records how the three candidate libraries compared.

Values are JSON values: dict, list, str, int, float, bool, None; `self` and `oldSelf` are dynamic.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from cel_expr_python import cel as _cel

_EXTENSIONS = ("strings", "lists", "math", "sets", "optional")
_STRING_LITERAL = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\"""")
_OLD_SELF = re.compile(r"\boldSelf\b")


class CelUnsupported(ValueError):
    """A rule that does not compile: not valid CEL, or a function the environment lacks."""


class CelEvalError(ValueError):
    """A runtime error: a missing key, a type mismatch, a division by zero, an overflow."""


@functools.cache
def _env() -> Any:
    config = "extensions:\n" + "".join(f"  - name: {name}\n" for name in _EXTENSIONS)
    return _cel.NewEnv(
        config=_cel.NewEnvConfigFromYaml(config),
        variables={"self": _cel.Type.DYN, "oldSelf": _cel.Type.DYN},
    )


@dataclass(frozen=True, slots=True)
class Program:
    """A compiled rule."""

    source: str
    """The rule text."""
    uses_old_self: bool
    """Whether it is a transition rule (evaluated only on updates that have an old value)."""
    expression: Any = field(compare=False, repr=False)
    """The compiled cel-expr-python expression."""

    def evaluate(self, self_value: Any, old_self: Any = None) -> Any:
        """The rule's value for `self` (and `oldSelf`). Raises CelEvalError."""
        env = _env()
        try:
            value = self.expression.eval(env.Activation({"self": self_value, "oldSelf": old_self}))
        except (RuntimeError, ValueError, TypeError) as exc:
            raise CelEvalError(str(exc)) from exc
        if str(value.type()) == "ERROR":
            raise CelEvalError(str(value.value()))
        return value.value()


@functools.lru_cache(maxsize=1024)
def compile_rule(source: str) -> Program:
    """Compile a rule. Raises CelUnsupported when it does not compile."""
    try:
        expression = _env().compile(source)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CelUnsupported(str(exc).strip()) from exc
    uses_old_self = bool(_OLD_SELF.search(_STRING_LITERAL.sub("''", source)))
    return Program(source=source, uses_old_self=uses_old_self, expression=expression)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def equal(a: Any, b: Any) -> bool:
    """CEL equality on JSON values (numbers across int/double, no bool/int mixing): what validation
    ratcheting compares old and new values with."""
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return bool(a == b)
