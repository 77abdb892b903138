import pytest

from saelib.lab.pareto import compare_at_equal_l0, compare_frontiers

# two frontiers whose L0 ranges barely overlap: A spans 5-10, B spans 8-200
A = [{"l0": 5.0, "loss": 0.05}, {"l0": 10.0, "loss": 0.02}]
B = [{"l0": 8.0, "loss": 0.01}, {"l0": 200.0, "loss": 0.001}]


def test_both_directions_use_every_point_inside_the_other_range():
    one_way = compare_at_equal_l0(A, B, "loss")
    both = compare_frontiers(A, B, "loss")
    assert len(one_way) == 1 and len(both) == 2
    assert [p["point_of"] for p in both] == ["reference", "rows"]          # sorted by l0: 8 (B's), 10 (A's)


def test_values_and_sign_are_always_rows_minus_reference():
    both = compare_frontiers(A, B, "loss")
    at_8 = both[0]
    assert at_8["l0"] == 8.0
    assert at_8["y_ref"] == pytest.approx(0.01)                 # B's own point
    assert 0.02 < at_8["y"] < 0.05                              # A interpolated between its points
    assert at_8["difference"] == pytest.approx(at_8["y"] - at_8["y_ref"])
    assert all(p["difference"] > 0 for p in both)               # A is above (worse than) B wherever compared
    swapped = compare_frontiers(B, A, "loss")
    assert [p["difference"] for p in swapped] == pytest.approx([-p["difference"] for p in both])


def test_disjoint_frontiers_have_nothing_to_compare():
    assert compare_frontiers(A, [{"l0": 50.0, "loss": 0.1}, {"l0": 60.0, "loss": 0.05}], "loss") == []
