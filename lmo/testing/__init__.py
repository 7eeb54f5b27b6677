"""The property kit: proves that an oracle keeps the ``Norm`` contract, or says exactly how it breaks it.

>>> from lmo.testing import check_plugin
>>> report = check_plugin(MyNorm)           # every example instance, every installed backend
>>> print(report); assert report.ok

- :func:`check_norm` asserts the contract on one input (any backend) and raises :class:`ContractViolation`, an
  ``AssertionError`` naming the property, the input's shape, dtype and backend, and the numbers.
- :func:`check_plugin` runs the whole suite (hard inputs plus a hypothesis search, per backend and dtype, and
  backend parity) and returns a :class:`Report`.
- :func:`arrays_for` is the hypothesis strategy of inputs that fit a norm, for your own tests.
- ``python -m lmo check package.module:Name`` runs ``check_plugin`` from the shell; exit status 1 on a violation.

The kit needs hypothesis (``pip install 'lmo-optim[kit]'``).
"""

from ._backends import Backend, available_backends, backend_for, to_numpy
from ._checks import ContractViolation, Measured, check_norm, tolerance
from ._plugin import Failure, Report, check_backend, check_parity, check_plugin, instances_of
from ._strategies import KINDS, arrays_for, hard_inputs, numpy_inputs

__all__ = [
    "ContractViolation",
    "check_norm",
    "check_plugin",
    "check_backend",
    "check_parity",
    "arrays_for",
    "numpy_inputs",
    "hard_inputs",
    "Report",
    "Failure",
    "Measured",
    "Backend",
    "available_backends",
    "backend_for",
    "to_numpy",
    "tolerance",
    "instances_of",
    "KINDS",
]
