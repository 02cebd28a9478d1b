"""Compared methods, registered with :mod:`sasq.method` on import."""

from baselines import simple  # noqa: F401 - registers fp, dynamic and the static observers
from baselines import quarot  # noqa: F401 - registers quarot-dynamic, quarot-static and sasq-quarot
from baselines import smoothquant  # noqa: F401 - registers smoothquant-dynamic, smoothquant-static and sasq-smoothquant
