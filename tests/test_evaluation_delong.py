"""DeLong AUC inference against pROC's published results on its aSAH data, and against a direct O(n^2)
implementation of DeLong et al. (1988) on random data with ties.

Reference numbers are copied from pROC's own test suite (github.com/xrobin/pROC):
* tests/testthat/test-roc.R ("roc works": expected.wfns/s100b/ndka$full) and tests/testthat/test-auc.R: AUCs;
* tests/testthat/test-var.R: DeLong variances; tests/testthat/test-cov.R: DeLong covariances;
* tests/testthat/test-ci.auc.R: ``expected.ci.auc`` of ndka;
* tests/testthat/test-roc.test.R: paired DeLong ``roc.test`` statistic, p value and conf.int (t1, t2, t3);
* tests/testthat/helper-deLongPlacementsCpp-expected.R: placement values (X: cases, Y: controls).
pROC's printed s100b interval "95% CI: 0.6301-0.8326 (DeLong)" is the documented ``ci(roc(outcome ~ s100b,
aSAH))`` example; its full-precision bounds follow from the published AUC and variance by pROC's formula
``qnorm(c(.025, .975), mean = auc, sd = sqrt(var))``.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from model_training.evaluation.delong import (
    auc_ci,
    fast_delong,
    oriented,
    paired_delong,
    paired_delong_test,
    resolve_direction,
)

TOL = 1e-12  # pROC's references carry 15 significant digits

PROC_AUC = {"wfns": 0.823678861788618, "s100b": 0.731368563685637, "ndka": 0.611957994579946}
PROC_VAR = {"wfns": 0.00146991470882363, "ndka": 0.0031908105493913, "s100b": 0.00266868245717244}
PROC_COV = {
    ("wfns", "ndka"): -0.000532967856762438,
    ("ndka", "s100b"): -0.000756164938056579,
    ("s100b", "wfns"): 0.00119615567376754,
}
PROC_CI_NDKA = (0.501244999271703, 0.611957994579946, 0.722670989888189)
# roc.test(r.a, r.b): (a, b, Z, p, conf.int low, conf.int high)
PROC_ROC_TEST = [
    ("wfns", "s100b", 2.20898359144091, 0.0271757822291882, 0.0104061769564846, 0.174214419249478),
    ("wfns", "ndka", 2.79777591868904, 0.00514557970691098, 0.0634011709339876, 0.3600405634833566),
    ("ndka", "s100b", -1.39077002573558, 0.164295175223054, -0.2876917446341914, 0.0488706064228094),
]
PROC_PLACEMENTS_NDKA_X5 = [0.805555555555556, 0.625, 0.680555555555556, 0.763888888888889, 0.0416666666666667]
PROC_PLACEMENTS_NDKA_Y5 = [1, 0.829268292682927, 0.878048780487805, 0.707317073170732, 0.902439024390244]


@pytest.fixture(scope="module")
def asah(shared_data):
    with open(shared_data / "asah" / "asah.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    y = np.array([1 if r["outcome"] == "Poor" else 0 for r in rows])
    scores = {k: np.array([float(r[k]) for r in rows]) for k in ("wfns", "s100b", "ndka")}
    assert (y == 1).sum() == 41 and (y == 0).sum() == 72
    return y, scores


def test_aucs_variances_covariances_match_proc(asah):
    y, s = asah
    names = ["wfns", "s100b", "ndka"]
    res = fast_delong(y, np.vstack([s[n] for n in names]))
    for i, n in enumerate(names):
        assert res.aucs[i] == pytest.approx(PROC_AUC[n], abs=TOL)
        assert res.covariance[i, i] == pytest.approx(PROC_VAR[n], abs=TOL)
    for (a, b), expected in PROC_COV.items():
        assert res.covariance[names.index(a), names.index(b)] == pytest.approx(expected, abs=TOL)
    assert np.allclose(res.covariance, res.covariance.T)


def test_placements_match_proc(asah):
    y, s = asah
    res = fast_delong(y, s["ndka"])
    assert res.case_placements.shape == (1, 41) and res.control_placements.shape == (1, 72)
    assert res.case_placements[0, :5] == pytest.approx(PROC_PLACEMENTS_NDKA_X5, abs=TOL)
    assert res.control_placements[0, :5] == pytest.approx(PROC_PLACEMENTS_NDKA_Y5, abs=TOL)


def test_auc_ci_matches_proc(asah):
    y, s = asah
    ci = auc_ci(y, s["ndka"])
    assert (ci.lower, ci.auc, ci.upper) == pytest.approx(PROC_CI_NDKA, abs=TOL)
    ci = auc_ci(y, s["s100b"])
    half = norm.ppf(0.975) * math.sqrt(PROC_VAR["s100b"])
    assert ci.lower == pytest.approx(PROC_AUC["s100b"] - half, abs=TOL)
    assert ci.upper == pytest.approx(PROC_AUC["s100b"] + half, abs=TOL)
    assert (round(ci.lower, 4), round(ci.upper, 4)) == (0.6301, 0.8326)  # as pROC prints it
    assert ci.confidence_level == 0.95


@pytest.mark.parametrize(("a", "b", "z", "p", "lo", "hi"), PROC_ROC_TEST)
def test_paired_test_matches_proc_roc_test(asah, a, b, z, p, lo, hi):
    y, s = asah
    t = paired_delong_test(y, s[a], s[b])
    assert t.auc1 == pytest.approx(PROC_AUC[a], abs=TOL)
    assert t.auc2 == pytest.approx(PROC_AUC[b], abs=TOL)
    assert t.diff == pytest.approx(PROC_AUC[a] - PROC_AUC[b], abs=TOL)
    assert t.z == pytest.approx(z, abs=1e-11)
    assert t.p == pytest.approx(p, abs=1e-13)
    d = paired_delong(y, s[a], s[b])
    assert (d.ci_lower, d.ci_upper) == pytest.approx((lo, hi), abs=1e-12)
    # swapping the curves flips z and keeps p (test-roc.test.R, "reversed")
    r = paired_delong_test(y, s[b], s[a])
    assert r.z == pytest.approx(-z, abs=1e-11) and r.p == pytest.approx(p, abs=1e-13)


def test_identical_curves_give_z0_p1(asah):
    y, s = asah
    t = paired_delong_test(y, s["wfns"], s["wfns"])
    assert (t.z, t.p) == (0.0, 1.0)


def test_direction_auto_follows_proc_and_reversed_scores_agree(asah):
    y, s = asah
    assert resolve_direction(y, s["wfns"]) == "<"
    assert resolve_direction(y, -s["wfns"]) == ">"
    assert resolve_direction(y, s["ndka"], "lower") == ">"
    # ci.auc(aSAH$outcome, -aSAH$ndka) == expected.ci.auc (test-ci.auc.R)
    neg = -s["ndka"]
    ci = auc_ci(y, oriented(neg, resolve_direction(y, neg)))
    assert (ci.lower, ci.auc, ci.upper) == pytest.approx(PROC_CI_NDKA, abs=TOL)
    # roc.test(r.mwfns, r.ms100b) gives t1's statistic (test-roc.test.R, direction='>')
    mw, ms = -s["wfns"], -s["s100b"]
    t = paired_delong_test(y, oriented(mw, resolve_direction(y, mw)), oriented(ms, resolve_direction(y, ms)))
    assert t.z == pytest.approx(PROC_ROC_TEST[0][2], abs=1e-11)


def _naive_delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. 1988 written from the definition: psi(X, Y) = 1, 1/2, 0 over all case-control pairs."""
    cases, controls = scores[:, y == 1], scores[:, y == 0]
    m, n = cases.shape[1], controls.shape[1]
    psi = (cases[:, :, None] > controls[:, None, :]) + 0.5 * (cases[:, :, None] == controls[:, None, :])
    aucs = psi.mean(axis=(1, 2))
    v10 = psi.mean(axis=2)  # (k, m)
    v01 = psi.mean(axis=1)  # (k, n)
    k = scores.shape[0]
    s10 = np.array(
        [[np.sum((v10[r] - aucs[r]) * (v10[c] - aucs[c])) / (m - 1) for c in range(k)] for r in range(k)]
    )
    s01 = np.array(
        [[np.sum((v01[r] - aucs[r]) * (v01[c] - aucs[c])) / (n - 1) for c in range(k)] for r in range(k)]
    )
    return aucs, s10 / m + s01 / n


def test_fast_algorithm_equals_definition_with_ties():
    rng = np.random.default_rng(20240611)
    for _ in range(5):
        n = int(rng.integers(12, 60))
        y = (rng.random(n) < 0.35).astype(int)
        y[:2] = [0, 1]
        base = y + rng.normal(0, 1.2, n)
        scores = np.vstack(
            [np.round(base, 0), np.round(base + rng.normal(0, 1, n), 1), rng.integers(0, 3, n)]
        )
        res = fast_delong(y, scores)
        aucs, cov = _naive_delong(y, scores.astype(float))
        assert res.aucs == pytest.approx(aucs, abs=1e-13)
        assert np.allclose(res.covariance, cov, atol=1e-14, rtol=0)
        for i in range(3):
            assert res.aucs[i] == pytest.approx(roc_auc_score(y, scores[i]), abs=1e-13)


def test_degenerate_inputs():
    y = np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="cases and controls"):
        fast_delong(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="finite"):
        fast_delong(y, np.array([0.1, np.nan, 0.3, 0.4]))
    with pytest.raises(ValueError, match="0 .control. and 1"):
        fast_delong(np.array([0, 2, 1]), np.array([0.1, 0.2, 0.3]))
    const = auc_ci(y, np.zeros(4))
    assert const.auc == 0.5 and const.variance == 0.0
    # perfect vs constant: difference 0.5 with zero variance -> no test, NaN with a note
    d = paired_delong(y, np.array([0.0, 0.1, 0.8, 0.9]), np.zeros(4))
    assert d.diff == 0.5 and math.isnan(d.z) and math.isnan(d.p) and d.note
