"""The Norm base class and the registry: registration, rejection of bad plugins, lookup, entry points, values."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import sys
import types

import numpy as np
import pytest

import lmo
from lmo import Norm, get_norm, norms
from lmo import norm as norm_module
from lmo.geometries import L1, L2, Lp, Scaled, Sign, WeightedSign

BUILTIN = {"sign", "l1", "l2", "lp", "rms", "weighted_sign", "scaled"}


def test_builtins_are_registered_by_name():
    assert BUILTIN <= set(norms())
    assert type(get_norm("sign")) is Sign and get_norm("lp", p=4).p == 4.0


def test_unknown_name_lists_the_known():
    with pytest.raises(ValueError, match="unknown norm 'spectral_typo'.*known norms: .*l1, l2"):
        get_norm("spectral_typo")


def test_unknown_and_invalid_parameters_are_named():
    with pytest.raises(ValueError, match="unknown parameter.*q.*takes: ndim, p"):
        get_norm("lp", q=2)
    with pytest.raises(ValueError, match="p must be a number with 1 < p < inf; got p=1"):
        get_norm("lp", p=1)
    with pytest.raises(ValueError, match="weights must be non-empty, finite and > 0"):
        WeightedSign(weights=(1.0, -2.0))
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        Scaled(base="l2", scale=0.0)
    with pytest.raises(ValueError, match="ndim must be an int >= 1"):
        Sign(ndim=0)
    with pytest.raises(ValueError, match="instance.*and parameters"):
        get_norm(Sign(), ndim=2)


def test_get_norm_passes_instances_through():
    n = Lp(p=3)
    assert get_norm(n) is n


def test_norms_are_immutable_values():
    a, b = get_norm("lp", p=3), Lp(p=3.0)
    assert a == b and hash(a) == hash(b) and a != Lp(p=4) and a != Sign()
    assert repr(a) == "Lp(ndim=1, p=3.0)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.p = 5  # type: ignore[misc]
    assert {Scaled(base="l1", scale=2), Scaled(base=L1(), scale=2.0)} == {Scaled(base=L1(), scale=2.0)}
    assert WeightedSign(weights=np.array([1.0, 2.0])).weights == (1.0, 2.0)


def test_parameters_are_keyword_only():
    with pytest.raises(TypeError):
        Lp(3.0)  # type: ignore[misc]


def test_registration_by_class_keyword_and_redefinition():
    class Box(Sign, name="test_box"):
        pass

    assert norms()["test_box"] is Box and Box.name == "test_box"

    class Box(Sign, name="test_box"):  # noqa: F811  same module and qualname: a re-definition (notebooks, reloads)
        pass

    assert norms()["test_box"] is Box


def test_duplicate_names_are_rejected():
    with pytest.raises(ValueError, match="'l2' is already registered by lmo.geometries.vector.L2"):
        class Mine(Sign, name="l2"):
            pass


def test_missing_methods_are_rejected_at_definition():
    with pytest.raises(TypeError, match=r"does not define dual_norm, lmo"):
        class Half(Norm, name="test_half"):
            def norm(self, x):
                return x

    assert "test_half" not in norms()


def test_bad_names_and_declarations_are_rejected():
    with pytest.raises(ValueError, match="must be a Python identifier"):
        class Spaced(Sign, name="has space"):
            pass
    with pytest.raises(ValueError, match="delta must be in \\(0, 1\\]"):
        class Overpromise(Sign, name="test_overpromise"):
            delta = 1.5
    with pytest.raises(ValueError, match="slack must be >= 0"):
        class Negative(Sign, name="test_negative"):
            slack = -0.1


def test_abstract_helpers_are_not_registered():
    before = set(norms())

    class Helper(Norm):  # no name: an abstract base for other norms
        scale: float = 1.0

    assert set(norms()) == before
    with pytest.raises(TypeError):
        Helper()  # abstract methods still missing


def test_entry_point_plugins_load_lazily(monkeypatch):
    module = types.ModuleType("fake_plugin_pkg")
    code = "from lmo.geometries import Sign\nclass Far(Sign, name='test_far'):\n    pass\n"
    loaded = []

    class FakeEntryPoint:
        name = "test_far"

        def load(self):
            loaded.append(True)
            exec(code, module.__dict__)
            return module.Far

    monkeypatch.setitem(sys.modules, "fake_plugin_pkg", module)
    monkeypatch.setattr(norm_module, "_entry_points", lambda: [FakeEntryPoint()])
    monkeypatch.setattr(norm_module, "_entry_points_loaded", set())
    assert not loaded
    far = get_norm("test_far")
    assert loaded == [True] and far.name == "test_far"
    get_norm("test_far")
    assert loaded == [True], "an entry point is loaded once"


def test_entry_point_group_name():
    assert lmo.ENTRY_POINT_GROUP == "lmo.geometries"
    assert isinstance(list(importlib.metadata.entry_points(group="lmo.geometries")), list)


def test_sharp_is_the_steepest_descent_step():
    g = np.array([[3.0, -4.0], [0.0, 0.0]])
    for n in (L2(), Sign(), L1(), Lp(p=3)):
        s = n.sharp(g)
        dual = n.dual_norm(g)
        np.testing.assert_allclose(np.sum(g * s, axis=-1), dual**2)
        np.testing.assert_allclose(n.norm(s), dual)


def test_examples_default_and_required_parameters():
    assert list(Sign.examples()) == [Sign()]

    class Needs(Sign):
        width: float

    with pytest.raises(TypeError, match="define the classmethod examples"):
        Needs.examples()
