"""The property kit: proves that an oracle keeps the ``Norm`` contract, or says exactly how it breaks it.

>>> from lmo.testing import check_plugin
>>> report = check_plugin(MyNorm)           # every example instance, every installed backend
>>> print(report); assert report.ok

- :func:`check_norm` asserts the contract on one input (any backend) and raises :class:`ContractViolation`, an
  ``AssertionError`` naming the property, the method that breaks it, the input's shape, dtype and backend, and the
  numbers.
- :func:`check_nonfinite` checks the policy for NaN and infinite inputs; :func:`check_manifold` the point-dependent
  methods of a manifold geometry (``lmo_at``, ``retract``, ``project``, ``tangent_residual``);
  :func:`check_bounds` the declared ``delta``/``slack`` on a large input; :func:`check_references` the geometry's
  declared :meth:`~lmo.Norm.reference_cases`.
- :func:`check_plugin` runs the whole suite (hard inputs at small and real sizes and in several memory layouts,
  references, non-finite inputs, manifold methods, hard spectra at size 256, a hypothesis search, per backend and
  dtype, and backend parity) and returns a :class:`Report`; ``profile="thorough"`` looks harder.
- :func:`arrays_for` is the hypothesis strategy of inputs that fit a norm, for your own tests.
- ``python -m lmo check package.module:Name`` runs ``check_plugin`` from the shell; exit status 1 on a violation.

The kit needs hypothesis (``pip install 'lmo-optim[kit]'``).
"""

from ._backends import LAYOUTS, Backend, available_backends, backend_for, to_numpy
from ._checks import ContractViolation, Measured, check_norm, rounding, tolerance
from ._manifold import ShapeRefused, check_manifold, is_manifold, manifold_inputs
from ._names import short_name
from ._nonfinite import check_nonfinite, nonfinite_inputs
from ._plugin import (
    PROFILES,
    Failure,
    Profile,
    Report,
    check_backend,
    check_bounds,
    check_hard_inputs,
    check_parity,
    check_plugin,
    check_references,
    instances_of,
)
from ._strategies import KINDS, arrays_for, hard_inputs, large_inputs, numpy_inputs

__all__ = [
    "ContractViolation",
    "check_norm",
    "check_nonfinite",
    "check_manifold",
    "check_bounds",
    "check_hard_inputs",
    "check_references",
    "check_plugin",
    "check_backend",
    "check_parity",
    "arrays_for",
    "numpy_inputs",
    "hard_inputs",
    "large_inputs",
    "nonfinite_inputs",
    "manifold_inputs",
    "is_manifold",
    "ShapeRefused",
    "Report",
    "Failure",
    "Profile",
    "PROFILES",
    "Measured",
    "Backend",
    "LAYOUTS",
    "available_backends",
    "backend_for",
    "to_numpy",
    "tolerance",
    "rounding",
    "short_name",
    "instances_of",
    "KINDS",
]
