"""Errors raised in Python, shaped like the ones raised in Rust."""

from __future__ import annotations

from ._native import ValidationError


def validation_error(option: str, found: str, expected: str, fix: str) -> ValidationError:
    """A ``ValidationError`` about the argument ``option`` with ``found``, ``expected`` and
    ``fix`` set, as every error from the native module has them."""
    error = ValidationError(f"{option}: found {found}; expected {expected}. Fix: {fix}")
    error.layer, error.found, error.expected, error.fix = "", found, expected, fix
    return error
