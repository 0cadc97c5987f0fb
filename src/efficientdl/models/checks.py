"""Argument checks shared by the model constructors."""

from __future__ import annotations


def check_positive_ints(**values: object) -> None:
    """ValueError naming the first of `values` (keyword = the argument's name) that is not a
    positive int."""
    for key, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive int, got {value!r}")
