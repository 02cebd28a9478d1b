"""Baselines without a model transform: float, dynamic per-token, static from an observer.

* ``fp``: the unquantized model (in the dtype it was loaded in).
* ``dynamic``: weights RTN per output channel; each token's activation scale is its abs-max
  divided by ``qmax``, computed at run time (QuaRot's default activation scheme).
* ``static-minmax``: one static scale per input quantizer from the global abs-max over all
  calibration windows (torchao's and llm-compressor's default static observer).
* ``static-percentile``: the mean over calibration windows of the 99.99th percentile of ``|x|``.

The mean-of-max static variant is SASQ's initialisation, registered as ``sasq-init``.
"""

from sasq.method import Method, register_method

FP = register_method(Method("fp", "unquantized model", "none"))
DYNAMIC = register_method(Method("dynamic", "RTN weights, dynamic per-token activation scales", "dynamic"))
STATIC_MINMAX = register_method(Method("static-minmax", "RTN weights, static scales from the global abs-max", "static", observer="minmax"))
STATIC_PERCENTILE = register_method(
    Method("static-percentile", "RTN weights, static scales from the mean per-window percentile of |x|", "static", observer="percentile")
)
