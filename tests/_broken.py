"""Deliberately broken geometries: each is a correct norm with one mistake, and the property kit must name it.

``BROKEN`` lists ``(class, backends, properties, method, blind spot)``: the backends to check it on, the property
names any of which may report it, the method that must be blamed, and what the plugin covers. None is registered
(no ``name=``), so the contract suite does not pick them up.
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np

from lmo import Norm
from lmo.backend import safe_divide
from lmo.geometries import L1, L2, RMS, Sign, Spectral, Sphere, WeightedSign
from lmo.geometries.polar_solvers import PolarSolver


class Box(Norm):
    """A correct l-infinity norm: the base of the broken plugins below. It keeps the NaN/inf policy through
    ``Norm._prepare`` (whose ``narrow`` applies it); the NaN plugins below break it by skipping those helpers."""

    def norm(self, x):
        xp, x, narrow = self._prepare(x, "x")
        return narrow(xp.max(xp.abs(x), axis=-1))

    def dual_norm(self, g):
        xp, g, narrow = self._prepare(g)
        return narrow(xp.sum(xp.abs(g), axis=-1))

    def lmo(self, g):
        xp, g, narrow = self._prepare(g)
        return narrow(-xp.sign(g))


class LimitBox(Box):
    """A correct l-infinity norm that returns the limit direction for +-inf inputs (``infinite_input = "limit"``)."""

    infinite_input = "limit"

    def lmo(self, g):
        xp, g, narrow = self._prepare(g)
        return narrow(-xp.sign(g))

    def _at_infinity(self, xp, x):
        return x  # -sign(g) is its own limit: the finite entries keep their signs


# -- the classic mistakes -----------------------------------------------------------------------------------------
class WrongSign(L2):
    """Returns the ascent direction g / ||g|| (what most codebases call the LMO)."""

    def lmo(self, g):
        return -super().lmo(g)


class Infeasible(Sign):
    """Steps twice as far as the unit ball allows."""

    def lmo(self, g):
        return 2 * super().lmo(g)


class NotOptimal(Norm):
    """l1 ball, but lmo = -g / ||g||_1 (feasible, not a vertex) and a dual norm made consistent with it."""

    def norm(self, x):
        xp, x, narrow = self._prepare(x, "x")
        return narrow(xp.sum(xp.abs(x), axis=-1))

    def dual_norm(self, g):
        xp, g, narrow = self._prepare(g)
        return narrow(-xp.sum(g * self.lmo(g), axis=-1))

    def lmo(self, g):
        xp, g, narrow = self._prepare(g)
        return narrow(-safe_divide(xp, g, xp.sum(xp.abs(g), axis=-1, keepdims=True)))


class DualMismatch(Sign):
    """l-infinity norm whose dual is reported as max|g| (the l-infinity norm again) instead of sum|g|."""

    def dual_norm(self, g):
        return Sign.norm(self, g)


class DualTooLarge(L1):
    """Reports sum|g| as the dual of the l1 norm."""

    def dual_norm(self, g):
        return Sign.dual_norm(self, g)


class NaNAtZero(Norm):
    """Euclidean norm written naively: lmo(0) = 0/0."""

    def norm(self, x):
        xp, x, narrow = self._prepare(x, "x")
        return narrow(xp.sqrt(xp.sum(x * x, axis=-1)))

    dual_norm = norm

    def lmo(self, g):
        xp, g, narrow = self._prepare(g)
        return narrow(-g / xp.sqrt(xp.sum(g * g, axis=-1, keepdims=True)))


class Overflows(NaNAtZero):
    """Naive Euclidean norm with the zero case fixed: squares still overflow at large scales."""

    def lmo(self, g):
        xp, g, narrow = self._prepare(g)
        return narrow(-safe_divide(xp, g, xp.sqrt(xp.sum(g * g, axis=-1, keepdims=True))))


class MutatesInput(Sign):
    """Writes into its input."""

    def lmo(self, g):
        out = super().lmo(g)
        g[...] = 0
        return out


class WrongDtype(Sign):
    """Always answers in float64."""

    def lmo(self, g):
        xp = array_api_compat.array_namespace(g)
        return xp.astype(super().lmo(g), xp.float64)


class IgnoresBatch(Sign):
    """Reduces every axis, not just the trailing one."""

    def norm(self, x):
        xp, x, narrow = self._prepare(x, "x")
        return narrow(xp.max(xp.abs(x)))


class NotHomogeneous(Box):
    """Shrinks small steps: lmo(g) = -sign(g) min(1, ||g||_1)."""

    def lmo(self, g):
        xp, g, narrow = self._prepare(g)
        return narrow(-xp.sign(g) * xp.clip(xp.sum(xp.abs(g), axis=-1, keepdims=True), max=1.0))


class FalseSymmetry(WeightedSign):
    """A weighted norm that claims invariance under every signed permutation."""

    symmetry = "signed_permutation"


class Crashes(Sign):
    def lmo(self, g):
        raise RuntimeError("boom")


# -- bugs outside the small window: sides beyond 6, batches of 4+, layouts, half precision -------------------------
class WrongAboveSide6(Box):
    """Right for vectors of up to 6 entries, half a step for longer ones."""

    def lmo(self, g):
        out = super().lmo(g)
        return 0.5 * out if g.shape[-1] > 6 else out


class WideOnly(Spectral):
    """The spectral oracle, but for wide matrices with more than 6 columns it drops the last column."""

    def lmo(self, g):
        out = super().lmo(g)
        if g.shape[-1] > g.shape[-2] and g.shape[-1] > 6:
            xp = array_api_compat.array_namespace(g)
            mask = xp.asarray([1.0] * (g.shape[-1] - 1) + [0.0], dtype=g.dtype)
            return out * mask
        return out


class WrongForBatchOf4(Box):
    """Right unless a batch axis has 4 or more entries."""

    def lmo(self, g):
        out = super().lmo(g)
        return 0.9 * out if any(n >= 4 for n in g.shape[:-1]) else out


class MixesBatch(L2):
    """Normalises by the largest norm of the whole batch instead of each entry's own."""

    def lmo(self, g):
        xp = array_api_compat.array_namespace(g)
        length = self.norm(g)[..., None]
        return super().lmo(g) * safe_divide(xp, length, xp.max(length) + 0 * length)


def _strided(g) -> bool:
    return array_api_compat.is_torch_array(g) and not g.is_contiguous()


class WrongWhenStrided(Box):
    """Right on contiguous tensors, 10% short on views (a transposed weight, a slice)."""

    def lmo(self, g):
        out = super().lmo(g)
        return 0.9 * out if _strided(g) else out


class WrongChannelsLast(Spectral):
    """Right unless the tensor is stored channels-last (4-D, memory format ``torch.channels_last``)."""

    def lmo(self, g):
        out = super().lmo(g)
        if array_api_compat.is_torch_array(g) and g.ndim == 4:
            import torch

            if g.is_contiguous(memory_format=torch.channels_last) and not g.is_contiguous():
                return 0.8 * out
        return out


class InfeasibleInBf16(Box):
    """2% outside the ball, in bfloat16 only."""

    def lmo(self, g):
        out = super().lmo(g)
        return out * 1.02 if "bfloat16" in str(g.dtype) else out


class ShortInFloat16(Box):
    """A 10% short step in float16 only."""

    def lmo(self, g):
        out = super().lmo(g)
        return out * 0.9 if "float16" in str(g.dtype) and "b" not in str(g.dtype) else out


class FlushesSubnormals(Box):
    """Treats inputs below the smallest normal number as zero (flush-to-zero)."""

    def lmo(self, g):
        xp = array_api_compat.array_namespace(g)
        out = super().lmo(g)
        tiny = xp.finfo(g.dtype).smallest_normal
        return out * xp.astype(xp.max(xp.abs(g), axis=-1, keepdims=True) >= tiny, g.dtype)


class DualOverflowsNearMax(Box):
    """dual_norm = (16 sum|g|) / 16: fine at 2^(3/4 of the range), inf when the result is near the largest float."""

    def dual_norm(self, g):
        xp, g, narrow = self._prepare(g)
        return narrow((16 * xp.sum(xp.abs(g), axis=-1)) / 16)


class PlantedNaN(Box):
    """Returns NaN for inputs with an entry above 1e20 (not an overflow: a planted NaN)."""

    def lmo(self, g):
        xp = array_api_compat.array_namespace(g)
        out = super().lmo(g)
        return xp.where(xp.max(xp.abs(g), axis=-1, keepdims=True) > 1e20, xp.nan * out, out)


# -- consistently wrong: only a reference value tells ------------------------------------------------------------
class RMSIsL2(RMS):
    """The rms geometry silently computing l2 (steps sqrt(n) too small), with norm, dual and lmo consistent."""

    def norm(self, x):
        return L2.norm(self, x)

    def dual_norm(self, g):
        return L2.dual_norm(self, g)

    def lmo(self, g):
        return L2.lmo(self, g)

    @classmethod
    def examples(cls):
        return (cls(),)


class InvertedRMSFactor(Spectral):
    """spectral(scale="rms") with the shape factor inverted: sqrt(d_in / d_out), consistent everywhere."""

    def _factor(self, core):
        return math.sqrt(core[-1] / core[-2])

    @classmethod
    def examples(cls):
        return (cls(scale="rms"),)


class ConsistentlyDoubled(L1):
    """An l1 ball of radius 2 (norm halved, dual and lmo doubled): consistent, and not the l1 norm it inherits."""

    def norm(self, x):
        return super().norm(x) / 2

    def dual_norm(self, g):
        return 2 * super().dual_norm(g)

    def lmo(self, g):
        return 2 * super().lmo(g)


# -- inexact oracles that overclaim only at real sizes -------------------------------------------------------------
class TruncatedBeyond64(Spectral):
    """Exact for matrices of rank up to 64, then only the top 32 singular pairs; claims delta = 0.9."""

    delta = 0.9

    def lmo(self, g):
        if min(g.shape[-2:]) <= 64:
            return super().lmo(g)
        xp = array_api_compat.array_namespace(g)
        u, s, vh = xp.linalg.svd(g, full_matrices=False)
        keep = xp.astype(xp.arange(s.shape[-1]) < 32, g.dtype)
        return -xp.matmul(u * keep[..., None, :], vh)

    @classmethod
    def examples(cls):
        return (cls(),)


class OverclaimedNewtonSchulz(Spectral):
    """One quintic step, declaring the delta it reaches on 6 x 6 inputs (it lifts singular values by 3.4 at most, so
    at rank 256, where they are ~1/16 after the scaling, it reaches a quarter)."""

    @property
    def solver(self):
        return PolarSolver("newton_schulz", steps=1, dtype="float32")

    @property
    def delta(self):
        return 0.5

    @property
    def slack(self):
        return 0.3

    @classmethod
    def examples(cls):
        return (cls(),)


# -- sharp and the norm axioms -------------------------------------------------------------------------------------
class SharpWrongSign(Box):
    """sharp(g) = +dual_norm(g) lmo(g): the ascent step."""

    def sharp(self, g):
        return -super().sharp(g)


class SharpMissingScale(Box):
    """sharp(g) = -lmo(g) (forgets the dual norm)."""

    def sharp(self, g):
        return -self.lmo(g)


class SharpOverflowsNearMax(Box):
    """sharp(g) = -(16 dual_norm(g)) lmo(g) / 16: fine at 2^(3/4 of the range), inf when the step nears the largest
    float."""

    def sharp(self, g):
        xp = array_api_compat.array_namespace(g)
        return -((16 * xp.sum(xp.abs(g), axis=-1, keepdims=True)) * self.lmo(g)) / 16


class QuasiNorm(Norm):
    """norm = (sum sqrt|x|)^2, which breaks the triangle inequality; dual and lmo of the l1 ball."""

    def norm(self, x):
        xp, x, narrow = self._prepare(x, "x")
        return narrow(xp.sum(xp.sqrt(xp.abs(x)), axis=-1) ** 2)

    def dual_norm(self, g):
        xp, g, narrow = self._prepare(g)
        return narrow(xp.max(xp.abs(g), axis=-1))

    def lmo(self, g):
        return L1().lmo(g)


class NormNotEven(Box):
    """norm counts negative entries at half weight: norm(-x) != norm(x)."""

    def norm(self, x):
        xp, x, narrow = self._prepare(x, "x")
        return narrow(xp.max(xp.where(x > 0, x, -0.5 * x), axis=-1))


class DualNotHomogeneous(Box):
    """dual_norm(g) = sum|g| + 0.01 max|g|^2."""

    def dual_norm(self, g):
        xp, g, narrow = self._prepare(g)
        return narrow(xp.sum(xp.abs(g), axis=-1) + 0.01 * xp.max(xp.abs(g), axis=-1) ** 2)


class NonzeroAtZero(Box):
    """lmo(0) = -1 everywhere (sign(0) taken as 1)."""

    def lmo(self, g):
        xp, g, narrow = self._prepare(g)
        return narrow(-xp.where(g >= 0, xp.ones_like(g), -xp.ones_like(g)))


class FalseSeparable(L2):
    """The Euclidean oracle claiming to be separable along its axis (it normalises by the whole vector)."""

    separable_axes = (-1,)


class TorchDisagrees(Norm):
    """Consistent on every backend, but torch's ball is twice numpy's (only the parity check can tell)."""

    def _scale(self, x):
        return 2.0 if array_api_compat.is_torch_array(x) else 1.0

    def norm(self, x):
        xp, y, narrow = self._prepare(x, "x")
        return narrow(xp.max(xp.abs(y), axis=-1) / self._scale(x))

    def dual_norm(self, g):
        xp, y, narrow = self._prepare(g)
        return narrow(xp.sum(xp.abs(y), axis=-1) * self._scale(g))

    def lmo(self, g):
        xp, y, narrow = self._prepare(g)
        return narrow(-xp.sign(y) * self._scale(g))


# -- NaN and inf inputs: oracles written without Norm._prepare (which applies the policy), each with one mistake ----
class NaNGivesZero(Box):
    """A NaN gradient gives a silent zero step (l2 and spectral before the policy)."""

    def lmo(self, g):
        xp = array_api_compat.array_namespace(g)
        out = -xp.sign(g)
        bad = xp.any(xp.isnan(g), axis=-1, keepdims=True)
        return xp.where(bad, xp.zeros_like(out), out)


class NaNInOneEntry(Box):
    """A NaN propagates to its own entry only (sign before the policy): the rest is a finite direction."""

    def lmo(self, g):
        return -array_api_compat.array_namespace(g).sign(g)


class NaNRaises(Box):
    """Raises on NaN inputs (like numpy's SVD on inf: LinAlgError)."""

    def lmo(self, g):
        xp = array_api_compat.array_namespace(g)
        if bool(xp.any(xp.isnan(g))):
            raise np.linalg.LinAlgError("SVD did not converge")
        return super().lmo(g)


class NaNLeaksAcrossBatch(Box):
    """Adds the sum of 0 * g over the whole batch: one NaN (or inf) entry poisons every batch entry."""

    def lmo(self, g):
        xp = array_api_compat.array_namespace(g)
        return -xp.sign(g) + xp.sum(0 * g)


class InfDirectionUnderNanPolicy(Box):
    """Declares infinite_input = "nan" but returns the finite direction -sign(g) for +-inf inputs."""

    def lmo(self, g):
        xp = array_api_compat.array_namespace(g)
        nan = xp.sum(xp.where(xp.isnan(g), g, xp.zeros_like(g)), axis=-1, keepdims=True)  # NaN iff a NaN
        return -xp.sign(g) + 0 * nan


class LimitPolicyGivesNaN(Box):
    """Declares infinite_input = "limit" but returns NaN for +-inf inputs (0 * inf)."""

    infinite_input = "limit"

    def lmo(self, g):
        xp = array_api_compat.array_namespace(g)
        return -xp.sign(g) + 0 * xp.sum(g, axis=-1, keepdims=True)


class LimitPolicyFiniteDual(LimitBox):
    """The limit direction for +-inf inputs, but a finite dual norm (the infinite entries dropped)."""

    def dual_norm(self, g):
        xp = array_api_compat.array_namespace(g)
        return xp.sum(xp.where(xp.isinf(g), xp.zeros_like(g), xp.abs(g)), axis=-1)


class LimitPolicyWrongLimit(LimitBox):
    """Under infinite_input = "limit", returns -sign(g) on the finite entries only (zero on the infinite ones)."""

    def lmo(self, g):
        xp = array_api_compat.array_namespace(g)
        out = super().lmo(g)
        return xp.where(xp.isinf(g), xp.zeros_like(out), out)


class BadPolicyName(Box):
    infinite_input = "clip"


# -- declarations the optimizers act on -----------------------------------------------------------------------------
class FalselyTransposable(Spectral):
    """Declares ``transposable`` (the optimizers would stack its tall matrices with the wide transposes of others)
    although its factor ``sqrt(d_out / d_in)`` depends on the orientation."""

    @property
    def transposable(self):
        return True

    @classmethod
    def examples(cls):
        return (cls(scale="rms"),)


# -- manifold methods ---------------------------------------------------------------------------------------------
class SphereAmbientLmoAt(Sphere):
    """lmo_at forgets the tangent space and returns the ambient lmo."""

    def lmo_at(self, x, g):
        return self.lmo(g)

    @classmethod
    def examples(cls):
        return (cls(),)


class SphereSuboptimalLmoAt(Sphere):
    """A tangent, feasible lmo_at that is not optimal: the projected gradient bent towards a fixed tangent
    direction."""

    def lmo_at(self, x, g):
        xp = array_api_compat.array_namespace(g)
        bend = xp.ones_like(g)
        return super().lmo_at(x, super().tangent_component(x, g) + 0.3 * xp.sqrt(xp.sum(g * g)) *
                              super().tangent_component(x, bend))

    @classmethod
    def examples(cls):
        return (cls(),)


class SphereInfeasibleLmoAt(Sphere):
    def lmo_at(self, x, g):
        return 2 * super().lmo_at(x, g)

    @classmethod
    def examples(cls):
        return (cls(),)


class SphereRetractNotFirstOrder(Sphere):
    """retract(x, v) = project(x + 2 v): on the manifold, but moves twice as far."""

    def retract(self, x, step):
        return self.project(x + 2 * step)

    @classmethod
    def examples(cls):
        return (cls(),)


class SphereRetractOffManifold(Sphere):
    """retract(x, v) = x + v: first-order, but leaves the sphere."""

    def retract(self, x, step):
        return x + step

    @classmethod
    def examples(cls):
        return (cls(),)


class SphereProjectWrongRadius(Sphere):
    """project onto the unit sphere whatever the radius (idempotent, first-order, and wrong)."""

    def project(self, x):
        return Sphere(ndim=self.ndim).project(x)

    def retract(self, x, step):
        return self.project(x + step)

    @classmethod
    def examples(cls):
        return (cls(radius=2.0),)


class SphereProjectNotIdempotent(Sphere):
    """project(x) = radius x / ||x|| + 0.01 x: each call moves the point again."""

    def project(self, x):
        return super().project(x) + 0.01 * x

    @classmethod
    def examples(cls):
        return (cls(),)


class SphereResidualAlwaysZero(Sphere):
    """tangent_residual(x, v) = 0 for every v: it does not measure the tangent space."""

    def tangent_residual(self, x, v):
        xp = array_api_compat.array_namespace(v)
        return xp.zeros(v.shape[:-1], dtype=v.dtype)

    @classmethod
    def examples(cls):
        return (cls(),)


class SphereLmoAtNotHomogeneous(Sphere):
    """lmo_at(x, g) shrinks with ||g||: not homogeneous of degree 0."""

    def lmo_at(self, x, g):
        xp = array_api_compat.array_namespace(g)
        scale = xp.clip(xp.sqrt(xp.sum(g * g, axis=-1, keepdims=True)), max=1.0)
        return super().lmo_at(x, g) * scale

    @classmethod
    def examples(cls):
        return (cls(),)


NUMPY = ["numpy"]
TORCH = ["torch"]
BROKEN = [
    (WrongSign, NUMPY, {"optimality"}, "lmo", "the ascent direction"),
    (Infeasible, NUMPY, {"feasibility"}, "lmo", "a step outside the ball"),
    (NotOptimal, NUMPY, {"duality"}, "dual_norm", "a self-consistent, non-optimal oracle (exhaustive search)"),
    (DualMismatch, NUMPY, {"reference", "duality", "optimality"}, "dual_norm", "the norm reported as its own dual"),
    (DualTooLarge, NUMPY, {"reference", "optimality"}, "dual_norm", "a dual norm that is too large"),
    (NaNAtZero, NUMPY, {"finite"}, "lmo", "0/0 at g = 0"),
    (Overflows, NUMPY, {"extreme scale", "finite", "tightness"}, "lmo", "squares that overflow"),
    (MutatesInput, NUMPY, {"input unchanged"}, "lmo", "writes into its input"),
    (WrongDtype, NUMPY, {"output"}, "lmo", "answers in another dtype"),
    (IgnoresBatch, NUMPY, {"output"}, "norm", "reduces the batch axes"),
    (NotHomogeneous, NUMPY, {"tightness", "homogeneity"}, "lmo", "not homogeneous of degree 0"),
    (FalseSymmetry, NUMPY, {"symmetry"}, "symmetry", "a false symmetry declaration"),
    (Crashes, NUMPY, {"crash"}, "lmo", "raises"),
    (WrongAboveSide6, NUMPY, {"tightness"}, "lmo", "a bug only for sides beyond 6"),
    (WideOnly, NUMPY, {"reference", "optimality", "tightness"}, "lmo", "a bug only for wide matrices"),
    (WrongForBatchOf4, NUMPY, {"tightness"}, "lmo", "a bug only for batch axes of 4 or more"),
    (MixesBatch, NUMPY, {"reference", "tightness", "feasibility"}, "lmo", "normalises across the batch"),
    (WrongWhenStrided, TORCH, {"tightness"}, "lmo", "a bug only on non-contiguous torch tensors"),
    (WrongChannelsLast, TORCH, {"reference", "tightness"}, "lmo", "a bug only on channels-last tensors"),
    (InfeasibleInBf16, TORCH, {"feasibility"}, "lmo", "2% outside the ball in bfloat16 only"),
    (ShortInFloat16, NUMPY, {"tightness"}, "lmo", "a bug only in float16"),
    (FlushesSubnormals, NUMPY, {"tightness"}, "lmo", "flushes subnormal inputs to zero"),
    (DualOverflowsNearMax, NUMPY, {"finite", "extreme scale"}, "dual_norm", "overflows only near the largest float"),
    (PlantedNaN, NUMPY, {"finite"}, "lmo", "a planted NaN (reported as NaN, not as an overflow)"),
    (RMSIsL2, NUMPY, {"reference"}, "norm", "rms that is silently l2"),
    (InvertedRMSFactor, NUMPY, {"reference"}, "norm", "spectral(scale='rms') with the factor inverted"),
    (ConsistentlyDoubled, NUMPY, {"reference"}, "norm", "a consistent but different ball than the inherited one"),
    (TruncatedBeyond64, NUMPY, {"optimality"}, "lmo", "an inexact oracle whose delta fails only beyond rank 64"),
    (OverclaimedNewtonSchulz, NUMPY, {"optimality", "feasibility", "tightness"}, "lmo",
     "a Newton-Schulz delta that holds on small inputs only"),
    (SharpWrongSign, NUMPY, {"sharp"}, "sharp", "sharp with the wrong sign"),
    (SharpMissingScale, NUMPY, {"sharp"}, "sharp", "sharp without the dual norm"),
    (SharpOverflowsNearMax, NUMPY, {"finite"}, "sharp", "a sharp that overflows only near the largest float"),
    (QuasiNorm, NUMPY, {"norm axioms"}, "norm", "a triangle-inequality bug in norm (blamed on norm)"),
    (NormNotEven, NUMPY, {"norm axioms"}, "norm", "norm(-x) != norm(x)"),
    (DualNotHomogeneous, NUMPY, {"homogeneity", "duality"}, "dual_norm", "a dual norm of degree 2"),
    (NonzeroAtZero, NUMPY, {"zero"}, "lmo", "lmo(0) != 0"),
    (FalseSeparable, NUMPY, {"separable"}, "lmo", "a false separable_axes declaration"),
    (TorchDisagrees, ["numpy", "torch"], {"backend parity"}, "norm", "backends that disagree consistently"),
    (FalselyTransposable, NUMPY, {"transposable"}, "transposable", "a false transposable declaration"),
    (NaNGivesZero, NUMPY, {"non-finite input"}, "lmo", "a silent zero step on NaN"),
    (NaNInOneEntry, NUMPY, {"non-finite input"}, "lmo", "a NaN that stays in its entry (a finite direction)"),
    (NaNRaises, NUMPY, {"non-finite input"}, "lmo", "an exception on NaN"),
    (NaNLeaksAcrossBatch, NUMPY, {"non-finite input"}, "lmo", "a NaN that poisons the other batch entries"),
    (InfDirectionUnderNanPolicy, NUMPY, {"non-finite input"}, "lmo", "a finite direction for inf under 'nan'"),
    (LimitPolicyGivesNaN, NUMPY, {"non-finite input"}, "lmo", "NaN for inf under 'limit'"),
    (LimitPolicyFiniteDual, NUMPY, {"non-finite input"}, "dual_norm", "a finite dual norm for inf"),
    (LimitPolicyWrongLimit, NUMPY, {"non-finite input"}, "lmo", "the wrong limit direction"),
    (BadPolicyName, NUMPY, {"declaration"}, "infinite_input", "an unknown infinite_input"),
    (SphereAmbientLmoAt, NUMPY, {"tangent"}, "lmo_at", "lmo_at that forgets the tangent space"),
    (SphereSuboptimalLmoAt, NUMPY, {"optimality"}, "lmo_at", "a tangent, feasible, suboptimal lmo_at"),
    (SphereInfeasibleLmoAt, NUMPY, {"feasibility"}, "lmo_at", "lmo_at outside the ball"),
    (SphereLmoAtNotHomogeneous, NUMPY, {"homogeneity", "tightness"}, "lmo_at", "lmo_at not homogeneous"),
    (SphereRetractNotFirstOrder, NUMPY, {"first order"}, "retract", "a retraction that is not first-order"),
    (SphereRetractOffManifold, NUMPY, {"retract"}, "retract", "a retraction that leaves the manifold"),
    (SphereProjectWrongRadius, NUMPY, {"reference"}, "project", "project onto the wrong sphere"),
    (SphereProjectNotIdempotent, NUMPY, {"project"}, "project", "a project that is not idempotent"),
    (SphereResidualAlwaysZero, NUMPY, {"tangent space"}, "tangent_residual", "a tangent_residual that is always 0"),
]
