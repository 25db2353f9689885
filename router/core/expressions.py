"""Operator expressions in routing rules: CEL (Common Expression Language), compiled once, never Python eval.

CEL (cel-expr-python, Google's C++ runtime) refuses unknown top-level names when a rule is loaded, bounds
iterations and nesting, and uses RE2 for regular expressions, so an operator's rule cannot hang the router.
"""
from __future__ import annotations

from typing import Any

from cel_expr_python import cel

ROOTS = ("message", "customer", "case", "labels")
_ENV = cel.NewEnv(variables={name: cel.Type.Map(cel.Type.STRING, cel.Type.DYN) for name in ROOTS})


class ExpressionError(ValueError):
    """An expression that does not compile, or did not evaluate to true or false."""


def _clean(error: Exception) -> str:
    text = str(error)
    # "INVALID_ARGUMENT: ERROR: <input>:1:8: undeclared reference ..." → "1:8: undeclared reference ..."
    for prefix in ("INVALID_ARGUMENT: ", "ERROR: ", "<input>:"):
        text = text.split(prefix, 1)[-1] if text.startswith(prefix) else text
    return text.split(" (in container")[0].split("\n")[0].strip()


class Expression:
    __slots__ = ("source", "_program")

    def __init__(self, source: str):
        self.source = source
        try:
            self._program = _ENV.compile(source)
        except RuntimeError as exc:
            raise ExpressionError(f"does not compile: {_clean(exc)}; names available: {', '.join(ROOTS)}") from None

    def evaluate(self, activation: Any) -> bool:
        result = self._program.eval(activation)
        if result.type() == cel.Type.ERROR:
            raise ExpressionError(str(result.value()))
        value = result.value()
        if not isinstance(value, bool):
            raise ExpressionError(f"gave {value!r}, not true or false")
        return value


def activation(context: dict[str, Any]) -> Any:
    """The evaluation context for one message, shared by every rule's expression."""
    return _ENV.Activation({name: context.get(name, {}) for name in ROOTS})
