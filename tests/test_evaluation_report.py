"""The Table-2 report on a seeded synthetic table: every row and column present, JSON and Markdown agree,
numbers agree with independent computations, degenerate inputs give n/a with notes instead of crashing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from model_training.evaluation.comparators import MARKERS
from model_training.evaluation.delong import paired_delong
from model_training.evaluation.report import MD_COLUMNS, build_table2


def _synthetic_rows(rng: np.random.Generator, n: int, start: int) -> list[dict]:
    rows = []
    for i in range(n):
        latent = rng.normal()
        label = int(latent + rng.normal(0, 0.8) > 0.6)
        row = {
            "case_id": f"SYN{start + i:04d}",
            "label": label,
            "cnn_probability": float(1 / (1 + math.exp(-(2.0 * latent + rng.normal(0, 0.8) - 1.0)))),
            "baseline_volume_ml": float(max(0.5, rng.gamma(2.0, 8.0) + 6.0 * latent)),
            "onset_to_ct_hours": float(rng.uniform(0.5, 8.0)),
            "dice": float(np.clip(rng.normal(0.85, 0.08), 0, 1)),
        }
        for j, m in enumerate(MARKERS):
            row[m] = int(latent * (0.2 + 0.1 * j) + rng.normal() > 0.3)
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    rng = np.random.default_rng(2021)
    train, test = _synthetic_rows(rng, 150, 0), _synthetic_rows(rng, 90, 1000)
    out = tmp_path_factory.mktemp("table2")
    table = build_table2(train, test, out)
    return train, test, out, table


def _md_table(md: str) -> dict[str, list[str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[1:] == list(MD_COLUMNS)
    out = {}
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if len(cells) == len(header):
            out[cells[0]] = cells[1:]
        if ln.startswith("| ") and "Threshold" in ln:
            break
    return out


def _cell(iv: dict | None) -> str:
    if not iv or iv["estimate"] is None:
        return "n/a"
    f = lambda x: "n/a" if x is None else f"{x:.2f}"  # noqa: E731
    return f"{f(iv['estimate'])} ({f(iv['lower'])} to {f(iv['upper'])})"


def test_files_rows_and_columns(report):
    _, _, out, table = report
    for name in ("table2.md", "table2.json", "roc.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = [r["label"] for r in table["rows"]]
    assert labels == [
        "Hypodensities",
        "Black hole sign",
        "Swirl sign",
        "Blend sign",
        "Fluid level",
        "Irregular shape",
        "Heterogeneous density",
        "Haematoma volume",
        "BAT score",
        "CNN",
    ]
    for r in table["rows"]:
        for key in ("sensitivity", "specificity", "lr_positive", "lr_negative", "auc"):
            assert r[key]["estimate"] is not None, (r["label"], key)
        assert r["counts"]["tp"] + r["counts"]["fn"] == r["n_cases"]
    assert json.loads((out / "table2.json").read_text()) == table


def test_json_and_markdown_agree(report):
    _, _, out, table = report
    md = (out / "table2.md").read_text()
    cells = _md_table(md)
    assert len(cells) == 10
    for r in table["rows"]:
        row = cells[r["label"]]
        expected = [
            _cell(r["sensitivity"]),
            _cell(r["specificity"]),
            _cell(r["lr_positive"]),
            _cell(r["lr_negative"]),
            _cell(r["lr_positive_weighted"]),
            _cell(r["lr_negative_weighted"]),
            _cell(r["auc"]),
        ]
        assert row[:7] == expected, r["label"]
        if r["key"] == "cnn":
            assert row[7] == "N/A"
        else:
            p = r["vs_cnn"]["p"]
            assert row[7] == ("<0.001" if p < 0.001 else f"{p:.3f}")
    d = table["dice"]
    assert f"Dice: {d['mean']:.3f} ± {d['sd']:.3f}" in md


def test_numbers_match_independent_computations(report):
    train, test, _, table = report
    y = np.array([r["label"] for r in test])
    cnn = np.array([r["cnn_probability"] for r in test])
    rows = {r["key"]: r for r in table["rows"]}
    assert rows["cnn"]["auc"]["estimate"] == pytest.approx(roc_auc_score(y, cnn), abs=1e-12)
    for m in MARKERS:
        s = np.array([r[m] for r in test], dtype=float)
        r = rows[m]
        assert r["threshold"] == 0.5
        assert r["auc"]["estimate"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert r["counts"]["tp"] == int(((s == 1) & (y == 1)).sum())
        d = paired_delong(y, cnn, s)
        assert r["vs_cnn"]["p"] == pytest.approx(d.p, abs=1e-14)
        odds = y.mean() / (1 - y.mean())
        assert r["lr_positive_weighted"]["estimate"] == pytest.approx(r["lr_positive"]["estimate"] * odds)
        assert r["lr_negative_weighted"]["upper"] == pytest.approx(r["lr_negative"]["upper"] * odds)
    # the volume model is monotone in volume: its AUC is the volume's AUC (or 1 - it)
    vol = np.array([r["baseline_volume_ml"] for r in test])
    assert rows["volume_model"]["auc"]["estimate"] == pytest.approx(roc_auc_score(y, vol), abs=1e-12)
    assert table["models"]["volume_model"]["coefficient_per_unit"] > 0
    assert rows["cnn"]["threshold_source"].startswith("Youden")
    dice = np.array([r["dice"] for r in test])
    assert table["dice"]["mean"] == pytest.approx(dice.mean())
    assert table["dice"]["sd"] == pytest.approx(dice.std(ddof=1))
    assert (
        len(table["dice"]["per_case"]) == len(test) and table["dice"]["per_case"][0]["case_id"] == "SYN1000"
    )
    assert table["test_set"] == {
        "n": 90,
        "n_cases": int(y.sum()),
        "n_controls": int(90 - y.sum()),
        "prevalence": pytest.approx(y.mean()),
    }


def test_missing_markers_are_omitted_and_fixed_threshold_used(tmp_path):
    rng = np.random.default_rng(5)
    train, test = _synthetic_rows(rng, 60, 0), _synthetic_rows(rng, 40, 100)
    for r in train + test:
        for m in ("black_hole", "fluid_level"):
            r[m] = ""
        del r["swirl"]
    table = build_table2(train, test, tmp_path, cnn_threshold=0.42, ci_method="exact")
    assert table["markers"] == ["hypodensity", "blend", "irregular_shape", "heterogeneous_density"]
    cnn = table["rows"][-1]
    assert cnn["threshold"] == 0.42 and cnn["threshold_source"].startswith("given")
    assert "Clopper-Pearson" in (tmp_path / "table2.md").read_text()


def test_degenerate_test_set_gives_na_with_notes(tmp_path):
    rng = np.random.default_rng(11)
    train = _synthetic_rows(rng, 60, 0)
    test = _synthetic_rows(rng, 12, 100)
    for r in test:
        r["label"] = 0  # one class only
        r["cnn_probability"] = 0.3  # constant score
    table = build_table2(train, test, tmp_path)
    assert any("one class" in n for n in table["notes"])
    for r in table["rows"]:
        assert r["auc"]["estimate"] is None
        assert r["sensitivity"]["estimate"] is None
        assert any("AUC not estimable" in n for n in r["notes"])
    md = (tmp_path / "table2.md").read_text()
    assert "n/a" in md and (tmp_path / "roc.png").exists()


def test_bad_labels_and_unknown_markers_are_refused(tmp_path):
    rows = _synthetic_rows(np.random.default_rng(1), 10, 0)
    with pytest.raises(ValueError, match="unknown markers"):
        build_table2(rows, rows, tmp_path, markers_present=["spot_sign"])
    rows[0]["label"] = 2
    with pytest.raises(ValueError, match="0 or 1"):
        build_table2(rows, rows, tmp_path)
