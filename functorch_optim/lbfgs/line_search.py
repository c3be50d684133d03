"""torch's strong-Wolfe line search (``_strong_wolfe``, minFunc's ``lswolfe``) in JAX.

Both phases (bracketing, then zooming into the bracket) are ``lax.while_loop`` over
fixed-shape states, so a search is part of one XLA computation; every trial point
is chosen by cubic interpolation as in torch.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

# torch calls _strong_wolfe with its own defaults: c1, c2 and tolerance_change are
# not the optimizer's options.
_WOLFE_C1 = 1e-4
_WOLFE_C2 = 0.9
_WOLFE_TOLERANCE_CHANGE = 1e-9


def _py_max(a, b):
    """Python's ``max(a, b)``: ``b`` only when ``b > a`` (so NaN ``a`` is kept)."""
    return jnp.where(b > a, b, a)


def _py_min(a, b):
    """Python's ``min(a, b)``: ``b`` only when ``b < a``."""
    return jnp.where(b < a, b, a)


def abs_max(x: Array) -> Array:
    """:math:`\\|x\\|_\\infty`, torch's ``abs().max()``."""
    # initial=0 makes an empty parameter vector read as already optimal instead of
    # failing on an empty reduction (torch raises there).
    return jnp.max(jnp.abs(x), initial=0)


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """torch's ``_cubic_interpolate``: minimizer of the cubic through two points.

    With the derivatives ``g1, g2`` at ``x1, x2`` (``x2`` the farther point):

    .. math::
        d_1 = g_1 + g_2 - 3 \\frac{f_1 - f_2}{x_1 - x_2}, \\quad
        d_2 = \\sqrt{d_1^2 - g_1 g_2}, \\quad
        x^* = x_2 - (x_2 - x_1) \\frac{g_2 + d_2 - d_1}{g_2 - g_1 + 2 d_2}

    clipped to ``bounds`` (default: the interval between the points), or the middle
    of the bounds when the cubic has no real minimizer.
    """
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        ordered = x1 <= x2
        xmin_bound = jnp.where(ordered, x1, x2)
        xmax_bound = jnp.where(ordered, x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    real_root = d2_square >= 0
    d2 = jnp.sqrt(jnp.where(real_root, d2_square, 0))
    min_pos = jnp.where(
        x1 <= x2,
        x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2)),
        x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2)),
    )
    clipped = _py_min(_py_max(min_pos, xmin_bound), xmax_bound)
    return jnp.where(real_root, clipped, (xmin_bound + xmax_bound) / 2.0)


class _Search(NamedTuple):
    """The bracketing phase's loop state: the current and the previous trial."""

    t: Array
    f_new: Array
    g_new: Array
    gtd_new: Array
    t_prev: Array
    f_prev: Array
    g_prev: Array
    gtd_prev: Array
    ls_iter: Array


class _Zoom(NamedTuple):
    """The zoom phase's loop state: a bracket of two trials, low one at ``low``."""

    t: Array  # (2,) step lengths
    f: Array  # (2,) losses
    g: Array  # (2, n) gradients
    gtd: Array  # (2,) directional derivatives
    low: Array
    insuf_progress: Array
    done: Array
    ls_iter: Array


def strong_wolfe(obj_func, x, t, d, f, g, gtd, max_ls):
    """torch's ``_strong_wolfe`` (minFunc's ``lswolfe``) as two ``while_loop``s.

    Finds ``t`` with the strong Wolfe conditions
    :math:`f(x + t d) \\le f + c_1 t\\, g^\\top d` and
    :math:`|\\nabla f(x + t d)^\\top d| \\le -c_2\\, g^\\top d`: first bracketing a
    point (extrapolating by cubic interpolation within ``[t + 0.01 (t - t_prev),
    10 t]``), then zooming into the bracket. Every trial costs one evaluation, and
    there are at most ``max_ls`` after the first.

    Returns:
      ``(f_new, g_new, t, ls_func_evals)`` as torch.
    """
    c1, c2 = _WOLFE_C1, _WOLFE_C2
    d_norm = abs_max(d)
    f_new, g_new = obj_func(x, t, d)
    zero = jnp.zeros_like(t)

    def stop_reason(s: _Search):
        # torch's three tests, in order: 1 = bracket [t_prev, t], 2 = Wolfe point
        # found, 0 = keep extrapolating.
        armijo_fails = (s.f_new > (f + c1 * s.t * gtd)) | (
            (s.ls_iter > 1) & (s.f_new >= s.f_prev)
        )
        wolfe = jnp.abs(s.gtd_new) <= -c2 * gtd
        return jnp.where(
            armijo_fails, 1, jnp.where(wolfe, 2, jnp.where(s.gtd_new >= 0, 1, 0))
        )

    def extrapolate(s: _Search) -> _Search:
        min_step = s.t + 0.01 * (s.t - s.t_prev)
        max_step = s.t * 10
        t_next = _cubic_interpolate(
            s.t_prev,
            s.f_prev,
            s.gtd_prev,
            s.t,
            s.f_new,
            s.gtd_new,
            bounds=(min_step, max_step),
        )
        f_next, g_next = obj_func(x, t_next, d)
        return _Search(
            t_next,
            f_next,
            g_next,
            g_next @ d,
            s.t,
            s.f_new,
            s.g_new,
            s.gtd_new,
            s.ls_iter + 1,
        )

    s = lax.while_loop(
        lambda s: (s.ls_iter < max_ls) & (stop_reason(s) == 0),
        extrapolate,
        _Search(t, f_new, g_new, g_new @ d, zero, f, g, gtd, jnp.int32(0)),
    )
    # torch runs the tests only while ls_iter < max_ls; after the last extrapolation
    # it brackets [0, t] without testing the new point.
    reason = jnp.where(s.ls_iter < max_ls, stop_reason(s), 0)

    def low_end(from_prev, from_point, from_origin):
        # The bracket's first end: the previous trial, the Wolfe point itself (a
        # bracket of one point), or the origin after max_ls trials.
        return jnp.where(
            reason == 1, from_prev, jnp.where(reason == 2, from_point, from_origin)
        )

    bracket_f = jnp.stack([low_end(s.f_prev, s.f_new, f), s.f_new])
    zoom = _Zoom(
        t=jnp.stack([low_end(s.t_prev, s.t, zero), s.t]),
        f=bracket_f,
        g=jnp.stack([low_end(s.g_prev, s.g_new, g), s.g_new]),
        gtd=jnp.stack([low_end(s.gtd_prev, s.gtd_new, gtd), s.gtd_new]),
        low=jnp.where(bracket_f[0] <= bracket_f[1], 0, 1),
        insuf_progress=jnp.bool_(False),
        done=reason == 2,
        ls_iter=s.ls_iter,
    )

    def keep_zooming(z: _Zoom):
        # the bracket is not yet too small to refine
        too_small = jnp.abs(z.t[1] - z.t[0]) * d_norm < _WOLFE_TOLERANCE_CHANGE
        return ~z.done & (z.ls_iter < max_ls) & ~too_small

    def refine(z: _Zoom) -> _Zoom:
        high = 1 - z.low
        t_new = _cubic_interpolate(z.t[0], z.f[0], z.gtd[0], z.t[1], z.f[1], z.gtd[1])
        # A trial too close to an end (within 10% of the bracket) after an earlier
        # such trial, or outside the bracket, moves 10% inside the nearer end.
        b_max = _py_max(z.t[0], z.t[1])
        b_min = _py_min(z.t[0], z.t[1])
        eps = 0.1 * (b_max - b_min)
        near_end = _py_min(b_max - t_new, t_new - b_min) < eps
        at_end = z.insuf_progress | (t_new >= b_max) | (t_new <= b_min)
        moved = jnp.where(
            jnp.abs(t_new - b_max) < jnp.abs(t_new - b_min), b_max - eps, b_min + eps
        )
        t_new = jnp.where(near_end & at_end, moved, t_new)
        insuf_progress = near_end & ~at_end

        f_new, g_new = obj_func(x, t_new, d)
        gtd_new = g_new @ d

        def put(arrays, index, value):
            return tuple(a.at[index].set(v) for a, v in zip(arrays, value))

        new_point = (t_new, f_new, g_new, gtd_new)
        bracket = (z.t, z.f, z.g, z.gtd)
        high_worse = (f_new > (f + c1 * t_new * gtd)) | (f_new >= z.f[z.low])
        wolfe = jnp.abs(gtd_new) <= -c2 * gtd
        # Armijo fails or no lower than the low end: the new point is the high end.
        as_high = put(bracket, high, new_point)
        # Otherwise it becomes the low end, the old low first becoming the high end
        # when the derivative says the minimum lies on the other side.
        flip = ~wolfe & (gtd_new * (z.t[high] - z.t[z.low]) >= 0)
        flipped = put(
            bracket, high, tuple(jnp.where(flip, a[z.low], a[high]) for a in bracket)
        )
        as_low = put(flipped, z.low, new_point)
        t_b, f_b, g_b, gtd_b = (
            jnp.where(high_worse, a, b) for a, b in zip(as_high, as_low)
        )
        low = jnp.where(high_worse, jnp.where(f_b[0] <= f_b[1], 0, 1), z.low)
        return _Zoom(
            t_b,
            f_b,
            g_b,
            gtd_b,
            low,
            insuf_progress,
            ~high_worse & wolfe,
            z.ls_iter + 1,
        )

    z = lax.while_loop(keep_zooming, refine, zoom)
    # every trial after the first counted one iteration
    return z.f[z.low], z.g[z.low], z.t[z.low], z.ls_iter + 1
