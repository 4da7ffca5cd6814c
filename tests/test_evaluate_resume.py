"""`vlmsam evaluate --resume`: a run killed with SIGKILL keeps every prediction it wrote, and the
resumed run ends with the metrics of an uninterrupted one without answering those requests again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import run_cli
from vlmsam.errors import VlmsamError


def _lines(path):
    return path.read_text().splitlines() if path.is_file() else []


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    data = tmp_path / "data"
    assert run_cli("data", "synth", "--out", data, "--n", "60", "--seed", "3").returncode == 0  # 6 test scenes
    common = ["evaluate", "--dataset", "reason_seg:test", "--dataset-dir", data, "--max-new-tokens", "16"]
    full = run_cli(*common, "--out", tmp_path / "full")
    assert full.returncode == 0, full.stderr[-2000:]

    out = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "vlmsam", *map(str, common), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    predictions = out / "predictions.jsonl"
    while len(_lines(predictions)) < 1:  # until its first answer is on disk (it must not end before)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists()  # really interrupted
    kept = _lines(predictions)
    assert 1 <= len(kept) < len(_lines(tmp_path / "full" / "predictions.jsonl"))
    # Mark a kept line, so the final file shows it was kept and not answered again, and leave a
    # partial last line as a kill in the middle of a write would.
    first = json.loads(kept[0])
    first["answer"] = "KEPT"
    predictions.write_text("\n".join([json.dumps(first), *kept[1:]]) + '\n{"image": "x", "que')

    resumed = run_cli(*common, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed: {len(kept)} prediction(s) kept" in resumed.stderr
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert a == b
    final = [json.loads(x) for x in _lines(predictions)]
    reference = [json.loads(x) for x in _lines(tmp_path / "full" / "predictions.jsonl")]
    assert [(x["image"], x["query"]) for x in final] == [(x["image"], x["query"]) for x in reference]
    assert final[0]["answer"] == "KEPT" and [x["masks"] for x in final] == [x["masks"] for x in reference]
    assert not list(out.glob("predictions.rank*.jsonl"))

    # Another evaluation's settings are not mixed into these predictions (checked before any model loads).
    from vlmsam.cli.evaluate import check_resumable
    from vlmsam.cli.main import build_parser

    args = build_parser().parse_args([*map(str, common[:-1]), "8", "--out", str(out), "--resume"])
    with pytest.raises(VlmsamError, match="max_new_tokens: 16 -> 8"):
        check_resumable(args)
