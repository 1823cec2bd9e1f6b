"""Binary metrics: proportion CIs, likelihood ratios (log method), prevalence weighting, Youden's threshold,
and the comparators (BAT score, unpenalised univariate logistic regression)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta, norm
from sklearn.metrics import roc_auc_score

from model_training.evaluation.binary_metrics import (
    binary_metrics,
    likelihood_ratios,
    proportion_ci,
    youden_threshold,
)
from model_training.evaluation.comparators import UnivariateLogisticModel, bat_score, bat_scores, markers_in

Z = norm.ppf(0.975)


def test_wilson_matches_closed_form_and_newcombe():
    for k, n in [(0, 10), (1, 10), (7, 10), (20, 22), (81, 263), (263, 263)]:
        p = k / n
        centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
        half = Z * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2)) / (1 + Z**2 / n)
        iv = proportion_ci(k, n, "wilson")
        assert iv.estimate == pytest.approx(p)
        assert (iv.lower, iv.upper) == pytest.approx((centre - half, centre + half), abs=1e-12)
    # Newcombe, Stat Med 1998;17:857-872, Table I, 81/263: score method 0.2553-0.3662, exact 0.2527-0.3676
    w, e = proportion_ci(81, 263, "wilson"), proportion_ci(81, 263, "exact")
    assert (round(w.lower, 4), round(w.upper, 4)) == (0.2553, 0.3662)
    assert (round(e.lower, 4), round(e.upper, 4)) == (0.2527, 0.3676)


def test_clopper_pearson_matches_beta_quantiles():
    for k, n in [(0, 12), (3, 12), (12, 12), (32, 55)]:
        iv = proportion_ci(k, n, "exact")
        lo = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
        hi = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
        assert (iv.lower, iv.upper) == pytest.approx((lo, hi), abs=1e-9)
    assert math.isnan(proportion_ci(0, 0).estimate)
    with pytest.raises(ValueError):
        proportion_ci(1, 2, "wald")  # type: ignore[arg-type]


def test_likelihood_ratios_worked_example():
    # TP 20, FN 2, FP 23, TN 32 (sensitivity 20/22, specificity 32/55)
    lr_pos, lr_neg, notes = likelihood_ratios(tp=20, fp=23, tn=32, fn=2)
    assert not notes
    assert lr_pos.estimate == pytest.approx((20 / 22) / (23 / 55))
    se_pos = math.sqrt(1 / 20 - 1 / 22 + 1 / 23 - 1 / 55)
    assert (lr_pos.lower, lr_pos.upper) == pytest.approx(
        (lr_pos.estimate * math.exp(-Z * se_pos), lr_pos.estimate * math.exp(Z * se_pos)), rel=1e-12
    )
    assert lr_neg.estimate == pytest.approx(0.15625)  # (2/22) / (32/55)
    se_neg = math.sqrt(1 / 2 - 1 / 22 + 1 / 32 - 1 / 55)
    assert lr_neg.lower == pytest.approx(0.15625 * math.exp(-Z * se_neg), rel=1e-12)
    assert (round(lr_pos.lower, 3), round(lr_pos.upper, 3)) == (1.550, 3.050)
    assert (round(lr_neg.lower, 4), round(lr_neg.upper, 4)) == (0.0409, 0.5969)


def test_paper_cnn_row_from_its_counts():
    """Zhong et al. Table 2, CNN: test set 77 (22 expansions); sens 0.91 (0.69-0.98), spec 0.58 (0.44-0.71),
    weighted LR- 0.06 (0.02-0.24), weighted LR+ 0.87. Counts 20/22 and 32/55 follow from those proportions.
    The paper's sensitivity/specificity intervals are the continuity-corrected Wilson ones."""
    y = np.array([1] * 22 + [0] * 55)
    score = np.array([1] * 20 + [0] * 2 + [1] * 23 + [0] * 32, dtype=float)
    m = binary_metrics(y, score, 0.5, ci_method="wilson_cc")
    assert (m.tp, m.fn, m.fp, m.tn) == (20, 2, 23, 32)
    r2 = lambda iv: (round(iv.estimate, 2), round(iv.lower, 2), round(iv.upper, 2))  # noqa: E731
    assert r2(m.sensitivity) == (0.91, 0.69, 0.98)
    assert r2(m.specificity) == (0.58, 0.44, 0.71)
    assert m.pretest_odds == pytest.approx(22 / 55)
    assert r2(m.lr_negative_weighted) == (0.06, 0.02, 0.24)
    assert round(m.lr_positive_weighted.estimate, 2) == 0.87
    assert m.lr_positive_weighted.estimate == pytest.approx(20 / 23)  # weighted LR+ = TP / FP
    assert m.lr_negative_weighted.estimate == pytest.approx(2 / 32)  # weighted LR- = FN / TN


def test_zero_cells_give_nan_intervals_with_notes():
    m = binary_metrics(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.1, 0.2]), 0.5)
    assert m.sensitivity.estimate == 1.0 and m.specificity.estimate == 1.0
    assert math.isinf(m.lr_positive.estimate) and math.isnan(m.lr_positive.lower)
    assert m.lr_negative.estimate == 0.0 and math.isnan(m.lr_negative.upper)
    assert len(m.notes) == 2
    one_class = binary_metrics(np.array([0, 0, 0]), np.array([0.1, 0.6, 0.2]), 0.5)
    assert math.isnan(one_class.sensitivity.estimate) and math.isnan(one_class.lr_positive.estimate)
    assert any("no cases" in n for n in one_class.notes)


def test_youden_threshold_midpoints_and_ties():
    y = np.array([0, 0, 0, 1, 1, 1])
    t = youden_threshold(y, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]))
    assert t.threshold == pytest.approx(0.5) and t.youden_j == 1.0 and t.n_tied == 1
    # controls 0.1, 0.5; cases 0.2, 0.8. Midpoints: 0.15 (sens 1, spec 1/2, J 1/2), 0.35 (1/2, 1/2, 0),
    # 0.65 (1/2, 1, J 1/2): 0.15 and 0.65 tie; the lower, more sensitive one is chosen.
    t = youden_threshold(np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.5, 0.8]))
    assert t.threshold == pytest.approx(0.15) and t.n_tied == 2
    assert (t.sensitivity, t.specificity, t.youden_j) == (1.0, 0.5, 0.5)
    with pytest.raises(ValueError):
        youden_threshold(np.array([1, 1]), np.array([0.2, 0.3]))


def test_bat_score_supplemental_table_3():
    assert bat_score(1, 1, 1.0) == 5
    assert bat_score(0, 1, 2.5) == 2  # >= 2.5 h scores 0
    assert bat_score(1, 0, 2.49) == 3
    assert bat_score(0, 0, 6.0) == 0
    assert math.isnan(bat_score(math.nan, 1, 1.0))
    with pytest.raises(ValueError):
        bat_score(2, 0, 1.0)
    rows = [{"blend": "1", "hypodensity": "0", "onset_to_ct_hours": "1.5"}, {"blend": "", "hypodensity": 1}]
    s = bat_scores(rows)
    assert s[0] == 3 and math.isnan(s[1])
    assert markers_in([{"swirl": "1", "blend": ""}, {"swirl": 0}]) == ["swirl"]


def test_univariate_logistic_is_unpenalised_mle():
    rng = np.random.default_rng(7)
    x = rng.gamma(2.0, 10.0, 300)  # volumes in mL
    y = (rng.random(300) < 1 / (1 + np.exp(-(-2.0 + 0.06 * x)))).astype(int)
    model = UnivariateLogisticModel.fit("volume", x, y)
    # score equations of the unpenalised MLE: sum(y - p) = 0 and sum(x (y - p)) = 0
    p = model.predict_proba(x)
    assert abs(np.sum(y - p)) < 1e-3 and abs(np.sum(x * (y - p))) / x.mean() < 1e-3
    assert p == pytest.approx(1 / (1 + np.exp(-(model.intercept + model.coefficient * x))), abs=1e-9)
    assert roc_auc_score(y, p) == pytest.approx(roc_auc_score(y, x))  # monotone in x
    out = model.predict_proba(np.array([np.nan, 10.0]))
    assert math.isnan(out[0]) and 0 < out[1] < 1
    with pytest.raises(ValueError, match="both classes"):
        UnivariateLogisticModel.fit("volume", x, np.zeros_like(y))
