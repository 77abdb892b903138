"""The one set of validators (saelib.validation): every error names the parameter and what is allowed,
and the places that validate the same kind of value (seeds, ranks, list parameters) use them."""
import math

import pytest

from saelib.validation import (
    check_choice,
    check_coefficients,
    check_each,
    check_index,
    check_positive,
    check_range,
    check_seed,
)


def test_check_choice():
    check_choice("kernel", "rectangle", ("rectangle", "gaussian"))
    with pytest.raises(ValueError, match=r"kernel='box' is not allowed; allowed values: 'rectangle', 'gaussian'"):
        check_choice("kernel", "box", ("rectangle", "gaussian"))


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "3", None, math.nan])
def test_check_positive_integer_refuses(value):
    with pytest.raises(ValueError, match="d_sae="):
        check_positive("d_sae", value, integer=True)


def test_check_positive_accepts_and_names_the_bound():
    check_positive("lr", 1e-3)
    check_positive("n", 0, allow_zero=True, integer=True)
    with pytest.raises(ValueError, match="allowed: an integer >= 0"):
        check_positive("n", -1, allow_zero=True, integer=True)
    with pytest.raises(ValueError, match="allowed: a number > 0"):
        check_positive("lr", 0.0)


def test_check_range():
    check_range("p", 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"allowed: \(0.0, 1.0\)"):
        check_range("p", 1.0, 0.0, 1.0, inclusive=False)
    with pytest.raises(ValueError, match="must be a number"):
        check_range("p", False, 0.0, 1.0)


@pytest.mark.parametrize("seed", [-1, 1.0, True, "0", None])
def test_check_seed_refuses(seed):
    with pytest.raises(ValueError, match="seed=.*allowed: an integer >= 0"):
        check_seed(seed)


def test_check_seed_accepts_and_names_other_parameters():
    check_seed(0)
    check_seed(2**40)
    with pytest.raises(ValueError, match="corpus_seed=-3"):
        check_seed(-3, "corpus_seed")


def test_check_index():
    check_index("rank", 1, 2)
    for bad in (2, -1, 1.0, True):
        with pytest.raises(ValueError, match=r"rank=.* allowed: an integer in \[0, world_size=2\)"):
            check_index("rank", bad, 2)


def test_check_each_and_check_coefficients():
    assert check_each("kernels", ("rectangle",), ("rectangle", "gaussian")) == ["rectangle"]
    with pytest.raises(ValueError, match="must not be empty"):
        check_each("kernels", [], ("rectangle",))
    with pytest.raises(ValueError, match="kernels contains 'box'"):
        check_each("kernels", ["box"], ("rectangle",))
    assert check_coefficients("lams", [1, 0.5]) == [1.0, 0.5]
    assert check_coefficients("betas", [0, 0.9], allow_zero=True) == [0.0, 0.9]
    for bad in ([], [0], [-1.0], [math.nan], [True], ["1"]):
        with pytest.raises(ValueError, match="lams"):
            check_coefficients("lams", bad)


def test_seeds_are_validated_the_same_way_everywhere():
    from saelib.data.corpus import generate_corpus, probe_slice
    from saelib.eval.synthetic import SyntheticActivations
    from saelib.lab.notebook import check_parameters

    calls = [lambda: SyntheticActivations(seed=-1), lambda: SyntheticActivations().sample(4, seed=-1),
             lambda: generate_corpus(3, seed=-1), lambda: probe_slice(10, seed=-1),
             lambda: check_parameters(scale="smoke", seed=-1)]
    for call in calls:
        with pytest.raises(ValueError, match=r"seed=-1 is not allowed; allowed: an integer >= 0"):
            call()


def test_the_notebook_layer_re_exports_the_list_validators():
    from saelib.lab import notebook

    assert notebook.check_each is check_each and notebook.check_coefficients is check_coefficients
