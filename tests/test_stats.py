import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from scipy import special
from scipy import stats as st

from abgraph.stats import Comparison, Summary, describe, holm, summarize, welch

nan = float("nan")


# --------------------------------------------------------------------- describe


def test_describe_hand_computed():
    # [1, 2, 3, 4]: mean 2.5, var = 5/3, t_{0.975, 3} = 3.182446305284263
    s = describe([1, 2, 3, 4])
    assert isinstance(s, Summary)
    assert s.n == 4
    assert s.mean == pytest.approx(2.5)
    assert s.std == pytest.approx(math.sqrt(5 / 3))
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert s.ci_low == pytest.approx(2.5 - half)
    assert s.ci_high == pytest.approx(2.5 + half)
    assert s.ci_low == pytest.approx(0.44573974, abs=1e-7)
    assert s.ci_high == pytest.approx(4.55426026, abs=1e-7)


def test_describe_matches_scipy_t_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=7)
    for conf in (0.8, 0.95, 0.99):
        s = describe(x, confidence=conf)
        lo, hi = st.t.interval(conf, len(x) - 1, loc=x.mean(), scale=st.sem(x))
        assert s.ci_low == pytest.approx(lo)
        assert s.ci_high == pytest.approx(hi)
        assert s.std == pytest.approx(np.std(x, ddof=1))


def test_describe_higher_confidence_is_wider():
    x = [0.1, 0.4, 0.35, 0.8]
    a, b = describe(x, 0.9), describe(x, 0.99)
    assert b.ci_low < a.ci_low < a.mean < a.ci_high < b.ci_high


def test_describe_drops_nan_and_counts_finite_only():
    s = describe([1.0, nan, 3.0, float("inf")])
    assert s.n == 2
    assert s.mean == pytest.approx(2.0)
    assert s == describe([1.0, 3.0])


def test_describe_treats_none_and_pd_na_as_missing():
    expected = describe([1.0, 3.0])
    assert describe([1.0, None, pd.NA, 3.0]) == expected
    assert describe(pd.Series([1.0, None, 3.0], dtype="Float64")) == expected
    assert describe(pd.Series([1, None, 3], dtype="Int64")) == expected


def test_describe_rejects_non_numeric():
    with pytest.raises(ValueError):
        describe(["a", "b"])


def test_describe_single_value_gives_nan_spread():
    s = describe([0.7])
    assert s.n == 1
    assert s.mean == 0.7
    assert math.isnan(s.std) and math.isnan(s.ci_low) and math.isnan(s.ci_high)


def test_describe_empty_and_all_nan():
    for values in ([], [nan, nan]):
        s = describe(values)
        assert s.n == 0
        assert all(math.isnan(v) for v in (s.mean, s.std, s.ci_low, s.ci_high))


def test_describe_constant_values_zero_width_interval():
    s = describe([2.0, 2.0, 2.0])
    assert s.std == 0.0
    assert s.ci_low == s.ci_high == 2.0


def test_describe_accepts_generators_series_and_arrays():
    expected = describe([1, 2, 3])
    assert describe(v for v in [1, 2, 3]) == expected
    assert describe(pd.Series([1, 2, 3])) == expected
    assert describe(np.array([[1], [2], [3]])) == expected


@pytest.mark.parametrize("conf", [0, 1, 1.5, -0.1])
def test_describe_rejects_bad_confidence(conf):
    with pytest.raises(ValueError, match="confidence"):
        describe([1, 2, 3], confidence=conf)


def test_summary_is_frozen():
    s = describe([1, 2])
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n = 3


# ------------------------------------------------------------------------ welch

A = [1.0, 2.0, 3.0, 4.0]
B = [3.0, 4.0, 5.0, 6.0, 7.0]


def test_welch_hand_computed():
    c = welch(A, B)
    assert isinstance(c, Comparison)
    # mean(b) - mean(a) = 5 - 2.5; var a = 5/3, var b = 5/2
    assert c.diff == pytest.approx(2.5)
    se = math.sqrt((5 / 3) / 4 + 2.5 / 5)
    assert c.t == pytest.approx(2.5 / se)
    dof = se**4 / (((5 / 3) / 4) ** 2 / 3 + (2.5 / 5) ** 2 / 4)
    assert c.df == pytest.approx(dof)
    assert c.df == pytest.approx(6.980769230769231)
    # pooled sd = sqrt((3 * 5/3 + 4 * 5/2) / 7) = sqrt(15/7)
    assert c.cohen_d == pytest.approx(2.5 / math.sqrt(15 / 7))
    # Hedges' g: exact J(7) and close to the usual 1 - 3/(4*7 - 1) approximation
    j7 = math.exp(special.gammaln(3.5) - special.gammaln(3.0)) / math.sqrt(3.5)
    assert c.hedges_g == pytest.approx(c.cohen_d * j7)
    assert c.hedges_g == pytest.approx(c.cohen_d * (1 - 3 / 27), abs=2e-3)


def test_welch_matches_scipy():
    rng = np.random.default_rng(1)
    for _ in range(5):
        a = rng.normal(0.0, 1.0, size=rng.integers(2, 10))
        b = rng.normal(0.5, 3.0, size=rng.integers(2, 10))
        ref = st.ttest_ind(b, a, equal_var=False)
        c = welch(a, b)
        assert c.t == pytest.approx(ref.statistic)
        assert c.p_value == pytest.approx(ref.pvalue)
        assert c.df == pytest.approx(ref.df)
        ci = ref.confidence_interval(0.95)
        assert c.ci_low == pytest.approx(ci.low)
        assert c.ci_high == pytest.approx(ci.high)
        ci90 = ref.confidence_interval(0.9)
        c90 = welch(a, b, confidence=0.9)
        assert (c90.ci_low, c90.ci_high) == pytest.approx((ci90.low, ci90.high))


def test_welch_sign_convention_b_minus_a():
    forward, backward = welch(A, B), welch(B, A)
    assert forward.diff > 0 and forward.t > 0 and forward.cohen_d > 0
    assert backward.diff == pytest.approx(-forward.diff)
    assert backward.t == pytest.approx(-forward.t)
    assert backward.p_value == pytest.approx(forward.p_value)
    assert backward.ci_low == pytest.approx(-forward.ci_high)


def test_welch_drops_nan():
    assert welch(A + [nan], B + [nan, float("inf")]) == welch(A, B)


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy's reference
def test_welch_one_side_constant_is_fine():
    c = welch([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    ref = st.ttest_ind([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], equal_var=False)
    assert c.p_value == pytest.approx(ref.pvalue)


@pytest.mark.parametrize(
    "a, b",
    [
        ([1.0], [1.0, 2.0, 3.0]),  # n < 2 in a
        ([1.0, 2.0, 3.0], [5.0]),  # n < 2 in b
        ([1.0, 1.0], [2.0, 2.0, 2.0]),  # zero variance both sides
        ([3.0, 3.0], [3.0, 3.0]),  # identical constants
    ],
)
def test_welch_degenerate_gives_nan_not_error(a, b):
    c = welch(a, b)
    for v in (c.t, c.p_value, c.ci_low, c.ci_high, c.cohen_d, c.hedges_g, c.df):
        assert math.isnan(v)
    assert c.diff == pytest.approx(np.mean(b) - np.mean(a))


def test_welch_empty_group():
    c = welch([], [1.0, 2.0])
    assert math.isnan(c.diff) and math.isnan(c.p_value)


# ------------------------------------------------------------------------- holm


def test_holm_worked_example():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_enforces_monotonicity():
    # sorted: 0.01*3=0.03, 0.4*2=0.8, 0.5*1=0.5 -> raised to 0.8
    assert holm([0.5, 0.4, 0.01]) == pytest.approx([0.8, 0.8, 0.03])


def test_holm_caps_at_one():
    assert holm([0.6, 0.7]) == [1.0, 1.0]


def test_holm_keeps_nan_and_excludes_it_from_m():
    out = holm([0.01, nan, 0.04])
    assert out[0] == pytest.approx(0.02)
    assert math.isnan(out[1])
    assert out[2] == pytest.approx(0.04)


def test_holm_accepts_none_and_degenerate_welch_output():
    p = [welch([1.0], [2.0, 3.0]).p_value, None, 0.01, 0.02]
    out = holm(p)
    assert math.isnan(out[0]) and math.isnan(out[1])
    assert out[2:] == pytest.approx([0.02, 0.02])


def test_holm_order_preserved_random():
    rng = np.random.default_rng(2)
    p = rng.uniform(0, 0.2, size=20)
    adj = np.array(holm(p))
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0)
    assert np.all(adj >= p) and np.all(adj <= 1)
    # the smallest p-value is always multiplied by m
    assert adj[order[0]] == pytest.approx(min(1.0, 20 * p[order[0]]))


def test_holm_edge_cases():
    assert holm([]) == []
    assert holm([0.03]) == [0.03]
    assert isinstance(holm((0.1, 0.2)), list)
    with pytest.raises(ValueError):
        holm([0.1, 1.2])
    with pytest.raises(ValueError):
        holm([-0.1])


def test_holm_matches_statsmodels():
    from statsmodels.stats import multitest   # in the dev extra: this runs, never skips
    p = [0.001, 0.2, 0.03, 0.04, 0.5, 0.012]
    ref = multitest.multipletests(p, method="holm")[1]
    assert holm(p) == pytest.approx(list(ref))


# -------------------------------------------------------------------- summarize


@pytest.fixture
def nodes():
    return pd.DataFrame(
        {
            "method": ["mag", "mag", "mag", "rand", "rand", "rand", "snip"],
            "sparsity": [0.5, 0.5, 0.9, 0.5, 0.5, 0.9, 0.5],
            "acc": [0.90, 0.92, 0.70, 0.80, nan, 0.60, 0.95],
            "name": list("abcdefg"),
        }
    )


def test_summarize_single_column(nodes):
    out = summarize(nodes, "acc", "method")
    assert list(out.columns) == ["method", "n", "mean", "std", "ci_low", "ci_high", "interval"]
    # sorted by mean descending
    assert list(out["method"]) == ["snip", "mag", "rand"]
    assert list(out.index) == [0, 1, 2]
    mag = out.iloc[1]
    ref = describe([0.90, 0.92, 0.70], bounds=(0, 1))   # "acc" is a proportion
    assert mag["n"] == 3 and mag["interval"] == "t, clipped to [0, 1]"
    assert (mag["mean"], mag["std"], mag["ci_low"], mag["ci_high"]) == pytest.approx(
        (ref.mean, ref.std, ref.ci_low, ref.ci_high)
    )
    # NaN metric dropped from n; single value -> nan spread
    rand = out.iloc[2]
    assert rand["n"] == 2
    snip = out.iloc[0]
    assert snip["n"] == 1 and math.isnan(snip["std"]) and math.isnan(snip["ci_low"])
    assert out["n"].dtype.kind == "i"


def test_summarize_string_and_list_by_agree(nodes):
    pd.testing.assert_frame_equal(
        summarize(nodes, "acc", "method"), summarize(nodes, "acc", ["method"])
    )


def test_summarize_multiple_columns(nodes):
    out = summarize(nodes, "acc", ["method", "sparsity"], confidence=0.9)
    assert list(out.columns[:2]) == ["method", "sparsity"]
    assert len(out) == 5
    assert list(out["mean"]) == sorted(out["mean"], reverse=True)
    row = out[(out["method"] == "mag") & (out["sparsity"] == 0.5)].iloc[0]
    assert row["n"] == 2 and math.isnan(row["ci_high"]) and row["interval"] == "none (n < 3)"
    row = out[(out["method"] == "mag") & (out["sparsity"] == 0.9)].iloc[0]
    assert row["n"] == 1 and math.isnan(row["ci_low"])


def test_summarize_keeps_missing_group_key():
    df = pd.DataFrame({"g": ["x", None, "x", None], "m": [1.0, 5.0, 2.0, 7.0]})
    out = summarize(df, "m", "g")
    assert len(out) == 2
    assert out["g"].isna().iloc[0]  # mean 6.0 sorts first
    assert out["mean"].iloc[0] == pytest.approx(6.0)


def test_summarize_nullable_dtypes():
    df = pd.DataFrame(
        {
            "g": pd.Series(["a", "a", "a", "b"], dtype="string"),
            "m": pd.Series([1.0, 2.0, None, 4.0], dtype="Float64"),
        }
    )
    out = summarize(df, "m", "g")
    assert list(out["g"]) == ["b", "a"]
    assert list(out["n"]) == [1, 2]
    assert out["mean"].iloc[1] == pytest.approx(1.5)


def test_summarize_empty_by_gives_overall_row(nodes):
    out = summarize(nodes, "acc", [])
    assert list(out.columns) == ["n", "mean", "std", "ci_low", "ci_high", "interval"]
    assert out["n"].iloc[0] == 6


def test_summarize_empty_frame():
    df = pd.DataFrame({"g": [], "m": []})
    out = summarize(df, "m", "g")
    assert list(out.columns) == ["g", "n", "mean", "std", "ci_low", "ci_high", "interval"]
    assert len(out) == 0


def test_summarize_all_nan_group_sorts_last():
    df = pd.DataFrame({"g": ["a", "b", "c"], "m": [nan, 1.0, 2.0]})
    out = summarize(df, "m", "g")
    assert list(out["g"]) == ["c", "b", "a"]
    assert out["n"].iloc[-1] == 0


def test_summarize_missing_metric_names_it_and_lists_columns(nodes):
    with pytest.raises(ValueError) as err:
        summarize(nodes, "accuracy", "method")
    msg = str(err.value)
    assert "'accuracy'" in msg
    for col in ("method", "sparsity", "acc", "name"):
        assert col in msg


def test_summarize_missing_by_column(nodes):
    with pytest.raises(ValueError, match="'seed'.*available columns: method"):
        summarize(nodes, "acc", ["method", "seed"])


def test_summarize_does_not_mutate_input(nodes):
    before = nodes.copy()
    summarize(nodes, "acc", ["method", "sparsity"])
    pd.testing.assert_frame_equal(nodes, before)
