"""Kept for scripts/bench_precision.py (`from tests.composed import composed`); tests import
tests.support.composed."""

from tests.support.composed import CONF, SMOKE, composed  # noqa: F401
