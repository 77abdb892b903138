import math

import pytest

from saelib.lab.pareto import compare_at_equal_l0, interpolate_at

REF = [{"l0": 100.0, "fvu": 0.1}, {"l0": 10.0, "fvu": 0.3}, {"l0": 1000.0, "fvu": 0.0}]


def test_interpolation_is_linear_in_log_l0_and_exact_at_the_points():
    assert interpolate_at(REF, 10.0, "fvu") == pytest.approx(0.3)
    assert interpolate_at(REF, 100.0, "fvu") == pytest.approx(0.1)
    # halfway between 10 and 100 in log space is sqrt(1000) ~ 31.6, not 55
    assert interpolate_at(REF, math.sqrt(1000.0), "fvu") == pytest.approx(0.2)
    assert interpolate_at(REF, 55.0, "fvu") < 0.2


def test_no_extrapolation_outside_the_reference_range():
    assert math.isnan(interpolate_at(REF, 5.0, "fvu"))
    assert math.isnan(interpolate_at(REF, 2000.0, "fvu"))
    assert math.isnan(interpolate_at([], 5.0, "fvu"))


def test_compare_keeps_only_points_inside_the_range_and_signs_the_difference():
    rows = [{"l0": 5.0, "fvu": 0.0}, {"l0": 100.0, "fvu": 0.05}, {"l0": 31.6227766, "fvu": 0.25}]
    pairs = compare_at_equal_l0(rows, REF, "fvu")
    assert [p["l0"] for p in pairs] == pytest.approx([31.6227766, 100.0])
    assert pairs[0]["difference"] == pytest.approx(0.05, abs=1e-6)        # above the reference: worse
    assert pairs[1]["difference"] == pytest.approx(-0.05)                 # below: better


def test_bad_l0_is_refused():
    with pytest.raises(ValueError, match="l0"):
        interpolate_at(REF, -1.0, "fvu")
