"""Hyperparameters checked from one declaration, in the manner of scikit-learn's
``_parameter_constraints``: each head declares ``{parameter: constraint}`` once, and
:func:`validate_params` checks every one of them at ``fit`` (ValueError naming the parameter).

    class MLPHead(...):
        _parameter_constraints = {**_TorchClipClassifier._parameter_constraints,
                                  "hidden": Int(1), "dropout": Real(0.0, 1.0, low_inclusive=True)}

Why not ``sklearn.utils._param_validation``: it is private to scikit-learn (its names and messages
change between releases), and the heads take values it has no constraint for (comma-separated grids,
layer selections). These few classes are the same idea, public here.

Every constructor parameter of a head must be declared (:func:`undeclared` finds the ones that are not;
a test checks each head). Rules that tie parameters together (an MLP refuses ``layers='each'``) stay in
the head's own ``_validate_params`` after the declared checks.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np


def is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and bool(np.isfinite(v))


def grid_values(name: str, value) -> list:
    """A hyperparameter's values: a scalar -> [it]; a list/tuple -> its items; a comma-separated string
    ("0.1,1,10") -> its numbers (int where they are whole and written without a point or exponent).
    ValueError naming the parameter for an empty grid or a string that is not numbers."""
    if isinstance(value, str):
        try:
            out = [int(v) if v.strip().lstrip("-").isdigit() else float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"{name}={value!r}: expected a number or comma-separated numbers") from None
    elif isinstance(value, (list, tuple, np.ndarray)):
        out = list(value)
    else:
        out = [value]
    if not out:
        raise ValueError(f"{name}={value!r}: an empty grid")
    return out


class Constraint:
    """One parameter's allowed values: ``check(name, value)`` raises ValueError naming it."""

    def ok(self, value) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def check(self, name: str, value) -> None:
        if not self.ok(value):
            raise ValueError(f"{name}={value!r}: expected {self.describe()}")


@dataclass(frozen=True)
class Int(Constraint):
    """An integer >= low (and <= high)."""

    low: int
    high: int | None = None

    def ok(self, value) -> bool:
        return is_int(value) and value >= self.low and (self.high is None or value <= self.high)

    def describe(self) -> str:
        return f"an integer >= {self.low}" + ("" if self.high is None else f" and <= {self.high}")


@dataclass(frozen=True)
class Real(Constraint):
    """A finite number above ``low`` (``low_inclusive``: or equal) and below ``high``."""

    low: float
    high: float | None = None
    low_inclusive: bool = False
    high_inclusive: bool = False

    def ok(self, value) -> bool:
        if not _is_real(value):
            return False
        if not (value >= self.low if self.low_inclusive else value > self.low):
            return False
        return self.high is None or (value <= self.high if self.high_inclusive else value < self.high)

    def describe(self) -> str:
        lo = f"{'>=' if self.low_inclusive else '>'} {self.low}"
        hi = "" if self.high is None else f" and {'<=' if self.high_inclusive else '<'} {self.high}"
        return f"a number {lo}{hi}"


@dataclass(frozen=True)
class Options(Constraint):
    """One of a few values (strings, None, booleans)."""

    values: tuple

    def ok(self, value) -> bool:
        return any(value is v or (type(value) is type(v) and value == v) for v in self.values)

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class AnyOf(Constraint):
    """A value meeting any of the constraints."""

    parts: tuple

    def ok(self, value) -> bool:
        return any(p.ok(value) for p in self.parts)

    def describe(self) -> str:
        return " or ".join(p.describe() for p in self.parts)


@dataclass(frozen=True)
class Grid(Constraint):
    """One value or a grid of them (a list, or a comma-separated string such as ``"0.1,1,10"``), each
    meeting ``each``."""

    each: Constraint

    def ok(self, value) -> bool:
        try:
            values = grid_values("grid", value)
        except (ValueError, TypeError):
            return False
        return all(self.each.ok(v) for v in values)

    def describe(self) -> str:
        return f"{self.each.describe()}, a list of them or a comma-separated string such as '1e-4,1e-3'"


@dataclass(frozen=True)
class LayerSelection(Constraint):
    """None (every layer), an integer layer index, a non-empty list of them, or one of ``words``
    (``'each'``: one probe per layer). Indices are checked against the data at fit."""

    words: tuple = ()

    def ok(self, value) -> bool:
        if value is None or (isinstance(value, str) and value in self.words):
            return True
        if isinstance(value, str):
            return False
        idx = np.atleast_1d(np.asarray(value, dtype=object))
        return idx.ndim == 1 and idx.size > 0 and all(is_int(i) for i in idx)

    def describe(self) -> str:
        words = "".join(f", {w!r}" for w in self.words)
        return f"None (all){words}, a layer index or a list of them"


class ClassWeight(Constraint):
    """None, a weighting rule or a dict {class label: weight >= 0} (:func:`heads.training.check_class_weight`,
    whose own message names the problem)."""

    def ok(self, value) -> bool:
        from heads.training import check_class_weight

        try:
            check_class_weight(value)
        except ValueError:
            return False
        return True

    def describe(self) -> str:
        return "None, 'balanced', 'paper' or a dict {class: weight >= 0}"

    def check(self, name: str, value) -> None:
        from heads.training import check_class_weight

        check_class_weight(value)


class Free(Constraint):
    """Any value (settings that do not change the model: a device string, a progress switch)."""

    def ok(self, value) -> bool:
        return True

    def describe(self) -> str:
        return "anything"


BOOL = Options((True, False))


def validate_params(est) -> None:
    """Check every declared parameter of ``est`` (its ``_parameter_constraints``) -> ValueError naming
    the first bad one."""
    for name, constraint in type(est)._parameter_constraints.items():
        constraint.check(name, getattr(est, name))


def undeclared(cls) -> list[str]:
    """Constructor parameters of ``cls`` with no declared constraint (each head must have none)."""
    return sorted(set(cls._get_param_names()) - set(getattr(cls, "_parameter_constraints", {})))
