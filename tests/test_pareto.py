import math

import pytest

from saelib.lab.pareto import compare_at_equal_l0, interpolate_at

REF = [{"l0": 100.0, "fvu": 0.1}, {"l0": 10.0, "fvu": 0.3}, {"l0": 1000.0, "fvu": 0.0}]


def test_interpolation_is_log_log_and_exact_at_the_points():
    assert interpolate_at(REF, 10.0, "fvu") == pytest.approx(0.3)
    assert interpolate_at(REF, 100.0, "fvu") == pytest.approx(0.1)
    # halfway between 10 and 100 in log L0 is sqrt(1000) ~ 31.6, not 55; in log y halfway between 0.3 and 0.1
    # is their geometric mean sqrt(0.03) = 0.1732, below the linear chord's 0.2 (the curve is convex)
    assert interpolate_at(REF, math.sqrt(1000.0), "fvu") == pytest.approx(math.sqrt(0.03))
    assert interpolate_at(REF, math.sqrt(1000.0), "fvu", log_y=False) == pytest.approx(0.2)
    # a quarter of the way in log L0: 0.3^(3/4) 0.1^(1/4)
    assert interpolate_at(REF, 10.0 ** 1.25, "fvu") == pytest.approx(0.3 ** 0.75 * 0.1 ** 0.25)
    assert interpolate_at(REF, 55.0, "fvu") < math.sqrt(0.03)


def test_a_power_law_is_interpolated_exactly():
    rows = [{"l0": l0, "y": 2.0 * l0 ** -1.5} for l0 in (4.0, 9.0, 64.0)]
    for l0 in (5.0, 7.3, 20.0, 50.0):
        assert interpolate_at(rows, l0, "y") == pytest.approx(2.0 * l0 ** -1.5)
        assert interpolate_at(rows, l0, "y", log_y=False) > 2.0 * l0 ** -1.5          # the chord lies above


def test_non_positive_neighbours_fall_back_to_linear_y():
    # between 100 (0.1) and 1000 (0.0) no logarithm exists: linear in y, still linear in log L0
    assert interpolate_at(REF, math.sqrt(1e5), "fvu") == pytest.approx(0.05)
    with pytest.raises(ValueError, match="log_y"):
        interpolate_at(REF, math.sqrt(1e5), "fvu", log_y=True)


def test_no_extrapolation_outside_the_reference_range():
    assert math.isnan(interpolate_at(REF, 5.0, "fvu"))
    assert math.isnan(interpolate_at(REF, 2000.0, "fvu"))
    assert math.isnan(interpolate_at([], 5.0, "fvu"))


def test_compare_keeps_only_points_inside_the_range_and_signs_the_difference():
    rows = [{"l0": 5.0, "fvu": 0.0}, {"l0": 100.0, "fvu": 0.05}, {"l0": 31.6227766, "fvu": 0.25}]
    pairs = compare_at_equal_l0(rows, REF, "fvu")
    assert [p["l0"] for p in pairs] == pytest.approx([31.6227766, 100.0])
    assert pairs[0]["y_ref"] == pytest.approx(math.sqrt(0.03), abs=1e-6)
    assert pairs[0]["difference"] == pytest.approx(0.25 - math.sqrt(0.03), abs=1e-6)   # above the reference: worse
    assert pairs[1]["difference"] == pytest.approx(-0.05)                 # below: better


def test_bad_l0_is_refused():
    with pytest.raises(ValueError, match="l0"):
        interpolate_at(REF, -1.0, "fvu")
