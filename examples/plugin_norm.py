"""A geometry plugin in about twenty lines: the l2,1 ("group lasso") norm of a matrix, rows as groups.

    ||X|| = sum_i ||X_i||_2          (X_i: the rows)
    ||G||_* = max_i ||G_i||_2
    lmo(G) = -G_k / ||G_k||_2 in the row k of largest norm, zero elsewhere (ties: mass split equally)

Check it with the property kit:

    python -m lmo check examples/plugin_norm.py:RowSum

and use it by name anywhere a geometry is taken: ``lmo.get_norm("row_sum")``.
"""

from lmo import Norm
from lmo.backend import safe_divide


class RowSum(Norm, name="row_sum"):
    ndim = 2                      # acts on the trailing two axes (matrices); leading axes are a batch
    symmetry = "orthogonal_right"  # X -> X Q keeps every row's length

    def _row_lengths(self, xp, x):
        peak = xp.max(xp.abs(x), axis=(-2, -1), keepdims=True)           # scale first: no overflow in squares
        unit = safe_divide(xp, x, peak)
        r = xp.sqrt(xp.sum(unit * unit, axis=-1, keepdims=True))
        return peak * r, safe_divide(xp, unit, r)                         # row lengths, and the rows made unit

    def norm(self, x):
        xp, x, narrow = self._prepare(x, "x")
        return narrow(xp.sum(self._row_lengths(xp, x)[0], axis=(-2, -1)))

    def dual_norm(self, g):
        xp, g, narrow = self._prepare(g)
        return narrow(xp.max(self._row_lengths(xp, g)[0], axis=(-2, -1)))

    def lmo(self, g):
        xp, g, narrow = self._prepare(g)
        lengths, rows = self._row_lengths(xp, g)
        best = xp.astype((lengths == xp.max(lengths, axis=(-2, -1), keepdims=True)) & (lengths > 0), g.dtype)
        share = safe_divide(xp, best, xp.sum(best, axis=(-2, -1), keepdims=True))
        nonfinite = 0 * xp.sum(g, axis=(-2, -1), keepdims=True)  # NaN or inf in a matrix: NaN out (no step)
        return narrow(-share * rows + nonfinite)


if __name__ == "__main__":
    import numpy as np

    from lmo.testing import check_plugin

    g = np.array([[3.0, 4.0], [1.0, 0.0]])
    print("lmo(g) =", RowSum().lmo(g).tolist(), " dual_norm(g) =", float(RowSum().dual_norm(g)))
    report = check_plugin(RowSum, max_examples=30)
    print(report)
    raise SystemExit(0 if report.ok else 1)
