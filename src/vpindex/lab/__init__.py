"""The benchmark lab: a timing harness, the strategy sweep behind ``vpindex bench``, plots,
and the KVM trace replay behind ``vpindex replay``.

Layering: the lab uses :mod:`vpindex.abi`, :mod:`vpindex.vpmap`, :mod:`vpindex.engine` and
:mod:`vpindex.backends`; the CLI uses the lab. matplotlib is imported only by
:mod:`vpindex.lab.plots`, and only when a plot is drawn.
"""

from vpindex.lab.timing import Timing, calibrate, measure, quartiles

__all__ = ["Timing", "calibrate", "measure", "quartiles"]
