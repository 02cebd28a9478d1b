"""Compared methods, registered with :mod:`sasq.method` on import."""

from baselines import simple  # noqa: F401 - registers fp, dynamic and the static observers
