"""`matchConditions` of admission webhooks: CEL expressions over `object`, `oldObject` and `request`
(the AdmissionReview request), evaluated by the same cel-cpp binding as CRD rules (`localcluster.cel`).

kube-apiserver's rule: a webhook is called only when every condition is true; any false condition skips
it; an error (with no condition false) is a failure its `failurePolicy` decides. The `authorizer`
variable is not provided (a condition using it does not compile, so the configuration is refused).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from cel_expr_python import cel as _cel

_EXTENSIONS = ("strings", "lists", "math", "sets", "optional")
VARIABLES = ("object", "oldObject", "request")


class ConditionError(ValueError):
    """A condition that does not compile, or that fails to evaluate."""


@functools.cache
def _env() -> Any:
    config = "extensions:\n" + "".join(f"  - name: {name}\n" for name in _EXTENSIONS)
    return _cel.NewEnv(
        config=_cel.NewEnvConfigFromYaml(config), variables=dict.fromkeys(VARIABLES, _cel.Type.DYN)
    )


@functools.lru_cache(maxsize=1024)
def _compile(source: str) -> Any:
    try:
        return _env().compile(source)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ConditionError(str(exc).strip()) from exc


def check(source: str) -> None:
    """ConditionError when `source` does not compile (the configuration is then refused)."""
    _compile(source)


def matches(conditions: Sequence[Mapping[str, Any]], request: Mapping[str, Any]) -> bool:
    """True when every condition holds for this AdmissionReview `request`, False when one is false;
    ConditionError when one fails and none is false."""
    activation = _env().Activation(
        {"object": request.get("object"), "oldObject": request.get("oldObject"), "request": dict(request)}
    )
    errors: list[str] = []
    for condition in conditions:
        try:
            value = _compile(str(condition.get("expression", ""))).eval(activation)
        except (RuntimeError, ValueError, TypeError, ConditionError) as exc:
            errors.append(f"{condition.get('name')}: {exc}")
            continue
        if str(value.type()) == "ERROR":
            errors.append(f"{condition.get('name')}: {value.value()}")
        elif value.value() is not True:
            if value.value() is False:
                return False
            errors.append(f"{condition.get('name')}: must evaluate to bool")
    if errors:
        raise ConditionError("; ".join(errors))
    return True
