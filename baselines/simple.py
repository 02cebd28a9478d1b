"""Baselines without a model transform: float, dynamic per-token, static from an observer.

* ``fp``: the unquantized model (in the dtype it was loaded in).
* ``dynamic``: weights RTN per output channel; each token's activation scale is its abs-max
  divided by ``qmax``, computed at run time (QuaRot's default activation scheme).
* ``static-minmax``: one static scale per input quantizer from the global abs-max over all
  calibration windows (torchao's and llm-compressor's default static observer).
* ``static-percentile``: the mean over calibration windows of the 99.99th percentile of ``|x|``.
* ``fp-gain``: the adaptation control. The float model with one trainable gain at each place
  where SASQ has an input quantizer (:mod:`sasq.gain`), trained exactly as ``sasq`` trains its
  scales. If it beats ``fp`` as much as ``sasq`` does, SASQ's gain is adaptation to the
  training corpus, not better quantization.

The mean-of-max static variant is SASQ's initialisation, registered as ``sasq-init``.
"""

from sasq.method import Method, register_method

FP = register_method(Method("fp", "unquantized model", "none"))
DYNAMIC = register_method(Method("dynamic", "RTN weights, dynamic per-token activation scales", "dynamic"))
STATIC_MINMAX = register_method(Method("static-minmax", "RTN weights, static scales from the global abs-max", "static", observer="minmax"))
STATIC_PERCENTILE = register_method(
    Method("static-percentile", "RTN weights, static scales from the mean per-window percentile of |x|", "static", observer="percentile")
)
FP_GAIN = register_method(
    Method("fp-gain", "control: float model with one trained gain per SASQ scale, trained as sasq trains", "none", trains=True, gains=True)
)
