"""Every CLI command that loads weights refuses unusable weights the same way: exit 3 and one JSON error line."""

from __future__ import annotations

import json

import pytest

from app.cli import main


@pytest.mark.parametrize("argv", [
    ["predict", "in.nii.gz", "--out", "out"],
    ["predict-batch", "manifest.csv", "--out", "out"],
    ["compare", "a.nii.gz", "b.nii.gz"],
])
def test_missing_weights_exit_3_with_a_json_error(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "manifest.csv").write_text("case_id,path\nc1,in.nii.gz\n")
    code = main([argv[0], "--weights-dir", str(tmp_path / "no_weights"), "--device", "cpu", *argv[1:]])
    assert code == 3
    error = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert error["error"] == "weights" and error["code"] and error["message"]
