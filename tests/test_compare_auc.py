"""``python -m model_training compare-auc`` on pROC's aSAH data reproduces pROC's published numbers.

References (github.com/xrobin/pROC test suite): AUCs from tests/testthat/test-roc.R and test-auc.R, the ndka
DeLong CI from tests/testthat/test-ci.auc.R, variances from test-var.R, and the paired DeLong ``roc.test``
statistics and p values from tests/testthat/test-roc.test.R.
"""

from __future__ import annotations

import json

import pytest

from model_training.commands.compare_auc import register

PROC_AUC = {"wfns": 0.823678861788618, "s100b": 0.731368563685637, "ndka": 0.611957994579946}
PROC_VAR = {"wfns": 0.00146991470882363, "ndka": 0.0031908105493913, "s100b": 0.00266868245717244}
PROC_CI_NDKA = (0.501244999271703, 0.722670989888189)
PROC_TESTS = {
    ("wfns", "s100b"): (2.20898359144091, 0.0271757822291882),
    ("wfns", "ndka"): (2.79777591868904, 0.00514557970691098),
    ("s100b", "ndka"): (1.39077002573558, 0.164295175223054),  # roc.test(r.s100b, r.ndka) = -t3
}


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["compare-auc", *argv])
    rc = args.func(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def asah_csv(shared_data):
    return str(shared_data / "asah" / "asah.csv")


def test_json_reproduces_proc(asah_csv, capsys):
    argv = [
        "--csv",
        asah_csv,
        "--label",
        "outcome",
        "--positive",
        "Poor",
        "--scores",
        "wfns,s100b,ndka",
        "--json",
    ]
    rc, out, _ = _run(argv, capsys)
    assert rc == 0
    res = json.loads(out)
    assert (res["n_cases"], res["n_controls"]) == (41, 72)
    scores = {s["score"]: s for s in res["scores"]}
    for name, auc in PROC_AUC.items():
        assert scores[name]["auc"] == pytest.approx(auc, abs=1e-12)
        assert scores[name]["variance"] == pytest.approx(PROC_VAR[name], abs=1e-12)
        assert scores[name]["direction"] == "<"
    assert (scores["ndka"]["ci_lower"], scores["ndka"]["ci_upper"]) == pytest.approx(PROC_CI_NDKA, abs=1e-12)
    assert (round(scores["s100b"]["ci_lower"], 4), round(scores["s100b"]["ci_upper"], 4)) == (0.6301, 0.8326)
    tests = {(t["score1"], t["score2"]): t for t in res["tests"]}
    assert set(tests) == set(PROC_TESTS)
    for pair, (z, p) in PROC_TESTS.items():
        assert tests[pair]["z"] == pytest.approx(z, abs=1e-11)
        assert tests[pair]["p"] == pytest.approx(p, abs=1e-13)
        assert tests[pair]["diff"] == pytest.approx(PROC_AUC[pair[0]] - PROC_AUC[pair[1]], abs=1e-12)


def test_text_table_and_direction_lower(asah_csv, capsys):
    argv = ["--csv", asah_csv, "--label", "outcome", "--positive", "Poor", "--scores", "wfns,ndka"]
    rc, out, _ = _run(argv, capsys)
    assert rc == 0
    assert "0.823679" in out and "0.611958" in out and "2.797776" in out and "controls < cases" in out
    # forcing "lower = case" flips the AUCs to 1 - AUC and keeps |z|
    rc, out, _ = _run([*argv, "--direction", "lower", "--json"], capsys)
    res = json.loads(out)
    assert res["scores"][0]["auc"] == pytest.approx(1 - PROC_AUC["wfns"], abs=1e-12)
    assert res["scores"][0]["direction"] == ">"
    assert res["tests"][0]["z"] == pytest.approx(-2.79777591868904, abs=1e-11)


def test_auto_direction_on_negated_score(tmp_path, capsys):
    # "a" is lower in cases (median rule -> ">"), "b" higher (-> "<"); both then describe the same ranking
    lines = ["y,a,b"]
    for i in range(30):
        y = int(i % 3 == 0)
        v = 2 * y + (i % 7) / 3
        lines.append(f"{y},{-v},{v}")
    csv_path = tmp_path / "neg.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    argv = ["--csv", str(csv_path), "--label", "y", "--positive", "1", "--scores", "a,b", "--json"]
    rc, out, _ = _run(argv, capsys)
    res = json.loads(out)
    assert rc == 0
    a, b = res["scores"]
    assert (a["direction"], b["direction"]) == (">", "<")
    assert a["auc"] == pytest.approx(b["auc"]) and a["auc"] > 0.5
    assert res["tests"][0]["z"] == 0.0 and res["tests"][0]["p"] == 1.0


def test_missing_values_and_errors(tmp_path, capsys):
    csv_path = tmp_path / "x.csv"
    csv_path.write_text("grp,s1,s2\ncase,0.9,1\nctrl,0.1,\ncase,0.8,3\nctrl,0.3,0\nctrl,0.2,1\n,0.5,2\n")
    rc, out, _ = _run(
        ["--csv", str(csv_path), "--label", "grp", "--positive", "case", "--scores", "s1,s2", "--json"],
        capsys,
    )
    res = json.loads(out)
    assert rc == 0 and (res["n_cases"], res["n_controls"]) == (2, 2)
    assert res["rows_left_out"] == {"rows": 6, "other_label_or_empty": 1, "missing_score": 1}
    rc, _, err = _run(
        ["--csv", str(csv_path), "--label", "grp", "--positive", "case", "--scores", "s3"], capsys
    )
    assert rc == 2 and "s3" in err
    rc, _, err = _run(
        ["--csv", str(csv_path), "--label", "grp", "--positive", "Case", "--scores", "s1"], capsys
    )
    assert rc == 2 and "no row" in err
    multi = tmp_path / "m.csv"
    multi.write_text("g,s\na,1\nb,2\nc,3\na,2\nb,1\n")
    rc, _, err = _run(["--csv", str(multi), "--label", "g", "--positive", "a", "--scores", "s"], capsys)
    assert rc == 2 and "--negative" in err
    rc, out, _ = _run(
        [
            "--csv",
            str(multi),
            "--label",
            "g",
            "--positive",
            "a",
            "--negative",
            "b",
            "--scores",
            "s",
            "--json",
        ],
        capsys,
    )
    assert rc == 0 and json.loads(out)["n_controls"] == 2
