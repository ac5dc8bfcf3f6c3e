"""A small subset of CEL, the language of CRD validation rules (`x-kubernetes-validations`). Pure.

Supported: literals (int, double, string, bool, null, lists `[..]`, maps `{k: v}`), the variables
`self` and `oldSelf`, field selection `a.b`, indexing `a[i]` / `m["k"]`, `has(a.b)`, `size(x)` and
`x.size()`, the string methods `startsWith`, `endsWith`, `contains`, comparison (`== != < <= > >=`),
arithmetic (`+ - * / %`), `in` on lists and map keys, `&& || !` (with CEL's error absorption: `false &&
<error>` is false), the conditional `c ? a : b` and parentheses.

Not supported (`compile` raises `CelUnsupported`): macros (`all`, `exists`, `map`, `filter`),
`matches`, type conversions, bytes, unsigned and raw literals, optional syntax, and any other function.
CRD rules that use them are not evaluated (the store logs a warning; see docs/architecture.md).

Values are JSON values: dict, list, str, int, float, bool, None. Numbers compare across int and
double, as in cel-go; ints are 64-bit and overflow is an error.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_VARIABLES = frozenset({"self", "oldSelf"})
_STRING_METHODS = frozenset({"startsWith", "endsWith", "contains"})


class CelUnsupported(ValueError):
    """A rule outside the supported subset (or not valid CEL at all)."""


class CelEvalError(ValueError):
    """A runtime error: a missing key, a type mismatch, a division by zero, an overflow."""


# ---------------------------------------------------------------------------------------- tokens
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<float>(?:\d+\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+))
  | (?P<int>0[xX][0-9a-fA-F]+|\d+)(?P<suffix>[uU])?
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>&&|\|\||==|!=|<=|>=|[-+*/%<>!?:.,()\[\]{}])
    """,
    re.VERBOSE,
)
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r", "`": "`", "?": "?"}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # int, float, string, ident, op, end
    value: Any


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise CelUnsupported(f"unexpected character {text[pos]!r} at offset {pos}")
        pos = match.end()
        kind = match.lastgroup
        if match.group("space"):
            continue
        if match.group("float") is not None:
            tokens.append(_Token("float", float(match.group("float"))))
        elif match.group("int") is not None:
            if match.group("suffix"):
                raise CelUnsupported("unsigned integer literals are not supported")
            tokens.append(_Token("int", int(match.group("int"), 0)))
        elif match.group("string") is not None:
            tokens.append(_Token("string", _unquote(match.group("string"))))
        elif match.group("ident") is not None:
            word = match.group("ident")
            if word in {"b", "r", "R", "B"} and pos < len(text) and text[pos] in "\"'":
                raise CelUnsupported("raw and bytes string literals are not supported")
            tokens.append(_Token("ident", word))
        else:
            assert kind in {"op", "suffix"}
            tokens.append(_Token("op", match.group("op")))
    tokens.append(_Token("end", None))
    return tokens


def _unquote(literal: str) -> str:
    body, out, i = literal[1:-1], [], 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            escaped = body[i + 1]
            if escaped not in _ESCAPES:
                raise CelUnsupported(f"string escape \\{escaped} is not supported")
            out.append(_ESCAPES[escaped])
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


# ---------------------------------------------------------------------------------------- syntax
@dataclass(frozen=True, slots=True)
class Node:
    """One syntax tree node: `op` names it, `args` are its children or its literal value."""

    op: str
    """`lit`, `var`, `list`, `map`, `select`, `has`, `index`, `call`, `cond`, or an operator."""
    args: tuple[Any, ...]


_BINARY_LEVELS: tuple[frozenset[str], ...] = (
    frozenset({"==", "!=", "<", "<=", ">", ">=", "in"}),
    frozenset({"+", "-"}),
    frozenset({"*", "/", "%"}),
)


class _Parser:
    """Recursive descent over CEL's precedence levels: ?: || && relations + * unary member."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def accept(self, op: str) -> bool:
        token = self.peek()
        if token.kind in {"op", "ident"} and token.value == op:
            self.pos += 1
            return True
        return False

    def expect(self, op: str) -> None:
        if not self.accept(op):
            raise CelUnsupported(f"expected {op!r}, found {self.peek().value!r}")

    def parse(self) -> Node:
        node = self.conditional()
        if self.peek().kind != "end":
            raise CelUnsupported(f"unexpected {self.peek().value!r}")
        return node

    def conditional(self) -> Node:
        node = self.logical("||", self.logical_and)
        if self.accept("?"):
            then = self.conditional()
            self.expect(":")
            return Node("cond", (node, then, self.conditional()))
        return node

    def logical_and(self) -> Node:
        return self.logical("&&", lambda: self.binary(0))

    def logical(self, op: str, operand: Callable[[], Node]) -> Node:
        node = operand()
        while self.accept(op):
            node = Node(op, (node, operand()))
        return node

    def binary(self, level: int) -> Node:
        if level == len(_BINARY_LEVELS):
            return self.unary()
        node = self.binary(level + 1)
        while self.peek().kind in {"op", "ident"} and self.peek().value in _BINARY_LEVELS[level]:
            op = self.take().value
            node = Node(op, (node, self.binary(level + 1)))
        return node

    def unary(self) -> Node:
        if self.accept("!"):
            return Node("!", (self.unary(),))
        if self.accept("-"):
            token = self.peek()
            if token.kind in {"int", "float"}:  # -9223372036854775808 is a valid literal
                self.take()
                return self.member(Node("lit", (-token.value,)))
            return Node("neg", (self.unary(),))
        return self.member(self.primary())

    def member(self, node: Node) -> Node:
        while True:
            if self.accept("."):
                name = self.take()
                if name.kind != "ident":
                    raise CelUnsupported(f"expected a field name after '.', found {name.value!r}")
                if self.accept("("):
                    if name.value != "size" and name.value not in _STRING_METHODS:
                        raise CelUnsupported(f"method {name.value}() is not supported")
                    node = self.method(node, name.value, self.arguments(")"))
                else:
                    node = Node("select", (node, name.value))
            elif self.accept("["):
                index = self.conditional()
                self.expect("]")
                node = Node("index", (node, index))
            else:
                return node

    def method(self, target: Node, name: str, args: list[Node]) -> Node:
        if name == "size" and not args:
            return Node("call", ("size", target))
        if name in _STRING_METHODS and len(args) == 1:
            return Node("call", (name, target, args[0]))
        raise CelUnsupported(f"method {name}() is not supported")

    def arguments(self, close: str) -> list[Node]:
        args: list[Node] = []
        if self.accept(close):
            return args
        while True:
            args.append(self.conditional())
            if self.accept(close):
                return args
            self.expect(",")

    def primary(self) -> Node:
        token = self.take()
        if token.kind in {"int", "float", "string"}:
            return Node("lit", (token.value,))
        if token.kind == "ident":
            return self.identifier(token.value)
        if token.value == "(":
            node = self.conditional()
            self.expect(")")
            return node
        if token.value == "[":
            return Node("list", tuple(self.arguments("]")))
        if token.value == "{":
            return self.map_literal()
        raise CelUnsupported(f"unexpected {token.value!r}")

    def identifier(self, name: str) -> Node:
        literals = {"true": True, "false": False, "null": None}
        if name in literals:
            return Node("lit", (literals[name],))
        if self.accept("("):
            if name not in {"has", "size"}:
                raise CelUnsupported(f"function {name}() is not supported")
            args = self.arguments(")")
            if name == "has" and len(args) == 1 and args[0].op == "select":
                return Node("has", args[0].args)
            if name == "size" and len(args) == 1:
                return Node("call", ("size", args[0]))
            raise CelUnsupported(f"function {name}() is not supported")
        if name not in _VARIABLES:
            raise CelUnsupported(f"undeclared reference to {name!r}")
        return Node("var", (name,))

    def map_literal(self) -> Node:
        entries: list[Node] = []
        if self.accept("}"):
            return Node("map", ())
        while True:
            key = self.conditional()
            self.expect(":")
            entries.extend((key, self.conditional()))
            if self.accept("}"):
                return Node("map", tuple(entries))
            self.expect(",")


@dataclass(frozen=True, slots=True)
class Program:
    """A compiled rule."""

    source: str
    """The rule text."""
    root: Node
    """Its syntax tree."""
    uses_old_self: bool
    """Whether it is a transition rule (evaluated only on updates that have an old value)."""

    def evaluate(self, self_value: Any, old_self: Any = None) -> Any:
        """The rule's value for `self` (and `oldSelf`). Raises CelEvalError."""
        return _Evaluator({"self": self_value, "oldSelf": old_self}).eval(self.root)


@functools.lru_cache(maxsize=1024)
def compile_rule(source: str) -> Program:
    """Parse a rule. Raises CelUnsupported for anything outside the subset."""
    root = _Parser(source).parse()
    return Program(source=source, root=root, uses_old_self=_mentions(root, "oldSelf"))


def _mentions(node: Node, variable: str) -> bool:
    if node.op == "var":
        return bool(node.args[0] == variable)
    if node.op == "lit":
        return False
    return any(isinstance(arg, Node) and _mentions(arg, variable) for arg in node.args)


# ---------------------------------------------------------------------------------------- values
def _type_name(value: Any) -> str:
    if value is None:
        return "null_type"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    return {float: "double", str: "string", list: "list", dict: "map"}.get(type(value), type(value).__name__)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _no_overload(op: str, *values: Any) -> CelEvalError:
    types = ", ".join(_type_name(v) for v in values)
    return CelEvalError(f"no matching overload for '{op}' applied to '({types})'")


def equal(a: Any, b: Any) -> bool:
    """CEL equality on JSON values: numbers across int/double, no bool/int mixing."""
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _checked_int(value: int) -> int:
    if not _INT_MIN <= value <= _INT_MAX:
        raise CelEvalError("integer overflow")
    return value


class _Evaluator:
    def __init__(self, variables: dict[str, Any]) -> None:
        self.variables = variables

    def eval(self, node: Node) -> Any:  # noqa: PLR0911, PLR0912 - one branch per node kind
        op, args = node.op, node.args
        if op == "lit":
            return args[0]
        if op == "var":
            return self.variables[args[0]]
        if op == "list":
            return [self.eval(a) for a in args]
        if op == "map":
            result = {}
            for i in range(0, len(args), 2):
                key = self.eval(args[i])
                if not isinstance(key, str | int):  # bool is an int too: all valid CEL map keys
                    raise CelEvalError(f"unsupported map key type: {_type_name(key)}")
                result[key] = self.eval(args[i + 1])
            return result
        if op == "select":
            target = self.eval(args[0])
            if not isinstance(target, dict):
                raise CelEvalError(f"no such key: {args[1]}")
            if args[1] not in target:
                raise CelEvalError(f"no such key: {args[1]}")
            return target[args[1]]
        if op == "has":
            target = self.eval(args[0])
            if not isinstance(target, dict):
                raise CelEvalError(f"invalid type for field selection: {_type_name(target)}")
            return args[1] in target
        if op == "index":
            return self.index(self.eval(args[0]), self.eval(args[1]))
        if op == "call":
            return self.call(args[0], [self.eval(a) for a in args[1:]])
        if op in {"&&", "||"}:
            return self.logical(op, args[0], args[1])
        if op == "!":
            value = self.eval(args[0])
            if not isinstance(value, bool):
                raise _no_overload("!_", value)
            return not value
        if op == "neg":
            value = self.eval(args[0])
            if not _is_number(value):
                raise _no_overload("-_", value)
            return _checked_int(-value) if isinstance(value, int) else -value
        if op == "cond":
            test = self.eval(args[0])
            if not isinstance(test, bool):
                raise _no_overload("_?_:_", test)
            return self.eval(args[1] if test else args[2])
        return _binary(op, self.eval(args[0]), self.eval(args[1]))

    def logical(self, op: str, left_node: Node, right_node: Node) -> bool:
        """`&&`/`||` are commutative over errors: a decisive side wins whatever the other does."""
        decisive = op == "||"
        results: list[bool | CelEvalError] = []
        for side in (left_node, right_node):
            try:
                value = self.eval(side)
            except CelEvalError as exc:
                results.append(exc)
                continue
            if not isinstance(value, bool):
                results.append(_no_overload(f"_{op}_", value))
                continue
            if value is decisive:
                return decisive
            results.append(value)
        for result in results:
            if isinstance(result, CelEvalError):
                raise result
        return not decisive

    @staticmethod
    def index(target: Any, key: Any) -> Any:
        if isinstance(target, list):
            if not isinstance(key, int) or isinstance(key, bool):
                raise _no_overload("_[_]", target, key)
            if not 0 <= key < len(target):
                raise CelEvalError(f"index out of bounds: {key}")
            return target[key]
        if isinstance(target, dict):
            for candidate in target:
                if equal(candidate, key):
                    return target[candidate]
            raise CelEvalError(f"no such key: {key}")
        raise _no_overload("_[_]", target, key)

    @staticmethod
    def call(name: str, values: list[Any]) -> Any:
        if name == "size":
            (value,) = values
            if not isinstance(value, str | list | dict):
                raise _no_overload("size", value)
            return len(value)
        target, argument = values
        if not isinstance(target, str) or not isinstance(argument, str):
            raise _no_overload(name, target, argument)
        checks = {"startsWith": str.startswith, "endsWith": str.endswith, "contains": str.__contains__}
        return checks[name](target, argument)


def _binary(op: str, a: Any, b: Any) -> Any:  # noqa: PLR0911 - one return per operator family
    if op == "==":
        return equal(a, b)
    if op == "!=":
        return not equal(a, b)
    if op == "in":
        if isinstance(b, list):
            return any(equal(a, item) for item in b)
        if isinstance(b, dict):
            return any(equal(a, key) for key in b)
        raise _no_overload("@in", a, b)
    if op in {"<", "<=", ">", ">="}:
        comparable = (_is_number(a) and _is_number(b)) or (type(a) is type(b) and isinstance(a, str | bool))
        if not comparable:
            raise _no_overload(f"_{op}_", a, b)
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    if op == "+" and type(a) is type(b) and isinstance(a, str | list):
        return a + b
    if not (_is_number(a) and _is_number(b)) or (isinstance(a, int) != isinstance(b, int)):
        raise _no_overload(f"_{op}_", a, b)
    if isinstance(a, int):
        return _checked_int(_int_arithmetic(op, a, b))
    if op == "%":
        raise _no_overload("_%_", a, b)
    if op == "/":
        return _float_divide(a, b)
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def _float_divide(a: float, b: float) -> float:
    """IEEE 754 division, as CEL's doubles: x/0 is +-inf, 0/0 is NaN."""
    if b != 0:
        return a / b
    if a == 0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def _int_arithmetic(op: str, a: int, b: int) -> int:
    if op in {"/", "%"} and b == 0:
        raise CelEvalError("division by zero" if op == "/" else "modulus by zero")
    if op == "/":
        quotient = abs(a) // abs(b)
        return quotient if (a >= 0) == (b >= 0) else -quotient
    if op == "%":
        return a - b * _int_arithmetic("/", a, b)
    return {"+": a + b, "-": a - b, "*": a * b}[op]
