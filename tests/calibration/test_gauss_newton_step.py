"""The damped, capped Gauss–Newton step against closed-form answers."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.fitting.gauss_newton import damped_capped_step


def test_undamped_step_solves_a_quadratic_exactly() -> None:
    # f(t) = 0.5 (t - t*)^T H (t - t*): gradient at 0 is -H t*, Newton lands on t*.
    hessian = np.array([[4.0, 1.0], [1.0, 3.0]])
    target = np.array([0.2, -0.1])
    step = damped_capped_step(hessian, -hessian @ target, 0.0, shift_indices=(0, 1))
    np.testing.assert_allclose(step, target, rtol=1e-12)


def test_marquardt_damping_shrinks_each_axis_by_its_own_curvature() -> None:
    hessian = np.diag([2.0, 8.0])
    gradient = np.array([-1.0, -1.0])
    step = damped_capped_step(hessian, gradient, 1.0, shift_indices=())
    np.testing.assert_allclose(step, [1.0 / 4.0, 1.0 / 16.0], rtol=1e-12)


def test_cap_scales_the_whole_step_and_keeps_its_direction() -> None:
    hessian = np.eye(3)
    gradient = np.array([-2.0, 1.0, -10.0])  # undamped step (2, -1, 10)
    step = damped_capped_step(hessian, gradient, 0.0, shift_indices=(0, 1), max_shift_px=0.5)
    # Only the shifts are capped (index 2 may be a scale or an amplitude), direction unchanged.
    np.testing.assert_allclose(step, [0.5, -0.25, 2.5], rtol=1e-12)


def test_step_inside_the_cap_is_untouched() -> None:
    step = damped_capped_step(np.eye(2), np.array([-0.1, 0.3]), 0.0, shift_indices=(0, 1))
    np.testing.assert_allclose(step, [0.1, -0.3], rtol=1e-12)


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="does not match"):
        damped_capped_step(np.eye(3), np.ones(2), 0.0, shift_indices=(0,))
