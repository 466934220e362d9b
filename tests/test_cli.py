"""CLI: generate → train → score on synthetic telemetry finds the injected anomalies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from nearwatch.worker.cli import main

from nearwatch.cli import main as full_main
from tests.test_detector import _auroc


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


def test_generate_train_score_finds_anomalies(workdir: Path) -> None:
    train_file, test_file = workdir / "train.jsonl", workdir / "test.jsonl"
    assert "wrote 3000 records (60 anomalies)" in _invoke(
        "generate", "--out", str(train_file), "--n", "3000", "--anomaly-rate", "0.02"
    )
    _invoke("generate", "--out", str(test_file), "--n", "1000", "--anomaly-rate", "0.05",
            "--seed", "7")
    output = _invoke("train", "--data", str(train_file), "--out", str(workdir / "model"),
                     "--label-field", "is_anomaly", "--encoder", "identity")
    assert "trained on 2940 normal records" in output
    test_lines = test_file.read_text().splitlines()
    test_lines.insert(5, "this line is not JSON")
    test_lines.insert(9, json.dumps({"id": "bad-1", "service": "api", "latency_ms": "slow"}))
    test_file.write_text("\n".join(test_lines) + "\n")
    output = _invoke("score", "--model", str(workdir / "model"), "--data", str(test_file),
                     "--out", str(workdir / "results.jsonl"), "--batch", "300")
    assert "scored 1002 records" in output and "2 errors" in output
    results = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
    assert len(results) == 1002
    assert "not valid JSON" in results[5]["error"]
    assert results[9]["id"] == "bad-1" and "latency_ms" in results[9]["error"]
    # named by input position (10th record, 10th line), not by its place among parsed records
    assert results[5]["error"].startswith("record 6 (line 6) ")
    assert results[9]["error"].startswith("record 10 id 'bad-1': field 'latency_ms'")
    truth = {json.loads(line)["id"]: json.loads(line)["is_anomaly"]
             for line in test_lines if line.startswith('{"id": "r')}
    scored = [r for r in results if "score" in r]
    assert [r["id"] for r in scored] == list(truth)  # same order as the input
    scores = np.array([r["score"] for r in scored])
    is_anomaly = np.array([truth[r["id"]] for r in scored])
    assert _auroc(scores, is_anomaly) > 0.9
    flagged = np.array([r["is_anomaly"] for r in scored])
    assert flagged[is_anomaly].mean() > 0.3


def test_score_reads_stdin_writes_stdout_and_explains_flagged(workdir: Path) -> None:
    """`--data - --out -` is a pipe: results alone on stdout, the summary on stderr; with
    `--explain N` a flagged record names the fields that deviate, an unflagged one does not."""
    spiked = {"id": "spike", "service": "api", "region": "eu-west", "status": 200,
              "latency_ms": 90000.0, "cpu_pct": 30.0}
    lines = (workdir / "test.jsonl").read_text().splitlines()[:40]
    text = "\n".join([*lines, json.dumps(spiked), "not json"]) + "\n"
    result = CliRunner().invoke(main, ["score", "--model", str(workdir / "model"), "--data",
                                       "-", "--out", "-", "--explain", "2"], input=text)
    assert result.exit_code == 0, result.output
    results = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(results) == 42 and "scored 42 records" in result.stderr
    # the spike lacks fields every training record had: scored as typical, and said so
    assert "of 42 records lack 'bytes_out', which every training record had" in result.stderr
    assert "'latency_ms'" not in result.stderr and "'status'" not in result.stderr  # had them
    plain = CliRunner().invoke(main, ["score", "--model", str(workdir / "model"), "--data",
                                      "-", "--out", "-"], input=text)
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning")]
    assert warned and warned == [line for line in plain.stderr.splitlines()
                                 if line.startswith("warning")]  # explaining counts nothing
    assert results[-1]["error"].startswith("record 42 (line 42) ")
    top = results[-2]
    assert top["id"] == "spike" and top["is_anomaly"]
    assert [f["field"] for f in top["fields"]][0] == "latency_ms" and len(top["fields"]) == 2
    assert top["fields"][0]["value"] == 90000.0  # float32 round-off is not shown
    assert all("fields" not in r for r in results[:-2] if not r.get("is_anomaly"))


def test_train_on_npz_uses_normals_only(workdir: Path) -> None:
    rng = np.random.default_rng(0)
    features = np.vstack([rng.normal(size=(800, 4)), rng.normal(6, 1, size=(20, 4))])
    labels = np.r_[np.zeros(800), np.ones(20)].astype(np.int8)
    np.savez_compressed(workdir / "data.npz", X=features.astype(np.float32), y=labels)
    output = _invoke("train", "--data", str(workdir / "data.npz"), "--out",
                     str(workdir / "npz-model"), "--encoder", "identity")
    assert "trained on 800 normal records" in output
    _invoke("score", "--model", str(workdir / "npz-model"), "--data", str(workdir / "data.npz"),
            "--out", str(workdir / "npz.jsonl"))
    results = [json.loads(line) for line in (workdir / "npz.jsonl").read_text().splitlines()]
    assert [r["id"] for r in results] == list(range(820))
    assert np.mean([r["is_anomaly"] for r in results[800:]]) > 0.9
    # rows of an array file are never pinned by `golden`: every labelled one may train
    output = _invoke("train", "--data", str(workdir / "data.npz"), "--out",
                     str(workdir / "npz-known"), "--encoder", "identity", "--label-field", "y",
                     "--known-anomalies", "20")
    assert "20 known anomalies)" in output and "held out" not in output


def test_npz_float64_values_keep_their_precision(workdir: Path) -> None:
    """An .npz was read as float32: a column around 1e9 (steps of 64) became constant, so
    6, 20 and 30 sigma deviations scored as normal."""
    rng = np.random.default_rng(8)
    features = np.column_stack([1e9 + rng.normal(size=2000), rng.normal(size=2000)])
    np.savez(workdir / "offset.npz", X=features, y=np.zeros(2000, dtype=np.int8))
    np.savez(workdir / "offset-live.npz",
             X=np.array([[1e9, 0.0], [1e9 + 6, 0.0], [1e9 + 20, 0.0], [1e9 - 30, 0.0]]))
    _invoke("train", "--data", str(workdir / "offset.npz"), "--out",
            str(workdir / "offset-model"), "--encoder", "identity")
    _invoke("score", "--model", str(workdir / "offset-model"), "--data",
            str(workdir / "offset-live.npz"), "--out", str(workdir / "offset.jsonl"))
    results = [json.loads(line) for line in (workdir / "offset.jsonl").read_text().splitlines()]
    assert [r["is_anomaly"] for r in results] == [False, True, True, True]


def test_train_with_too_few_records_is_a_clear_error_when_strict(workdir: Path) -> None:
    _invoke("generate", "--out", str(workdir / "small.jsonl"), "--n", "100")
    result = CliRunner().invoke(main, ["train", "--data", str(workdir / "small.jsonl"),
                                       "--out", str(workdir / "small-model"), "--strict",
                                       "--encoder", "identity"])
    assert result.exit_code != 0
    assert "299 calibration records" in result.output
    # the CLI's advice names its flags, not the Python arguments (alpha=None, strict=False)
    assert "raise --alpha or --delta, or train without --strict (--allow-uncertified" in \
        result.output
    assert "strict=False" not in result.output and "alpha=None" not in result.output
    warned = CliRunner().invoke(main, ["train", "--data", str(workdir / "small.jsonl"),
                                       "--out", str(workdir / "small-model"),
                                       "--encoder", "identity"])
    assert warned.exit_code == 0, warned.output
    assert "certified_ is False. Pass --strict to refuse instead." in warned.stderr
    assert "strict=True" not in warned.output
    # library users keep the Python names
    from nearwatch.detector import Detector
    from nearwatch.detector.errors import CalibrationError

    records = [json.loads(line) for line in (workdir / "small.jsonl").read_text().splitlines()]
    with pytest.raises(CalibrationError, match="or strict=False for an uncertified threshold"):
        Detector(strict=True, encoder="identity").fit(records)


def test_train_options_use_the_python_names(workdir: Path) -> None:
    """`--n-neighbors`/`--random-state` are the documented spellings (the README deprecates
    `k` and `seed`); `--k`/`--seed` still work."""
    from nearwatch.detector import Detector

    help_text = _invoke("train", "--help")
    assert "--n-neighbors" in help_text and "--random-state" in help_text
    data = str(workdir / "small.jsonl")
    _invoke("generate", "--out", data, "--n", "100")
    for args, n_neighbors, random_state in ((["--n-neighbors", "3", "--random-state", "4"], 3, 4),
                                            (["--k", "2", "--seed", "6"], 2, 6)):
        out = workdir / f"model-k{n_neighbors}"
        _invoke("train", "--data", data, "--out", str(out), "--encoder", "identity", *args)
        params = Detector.load(out).get_params()
        assert (params["n_neighbors"], params["random_state"]) == (n_neighbors, random_state)


def test_score_errors_keep_ids_and_say_where_stdout_went(workdir: Path) -> None:
    fields = {f"k{i}": i for i in range(8)}
    (workdir / "limits.jsonl").write_text("\n".join([
        json.dumps({"id": "manyfields", **fields}), json.dumps({"id": "deep", "x": [[[1]]]}),
        "", "{bad"]) + "\n")
    result = CliRunner().invoke(main, ["score", "--model", str(workdir / "model"), "--data",
                                       str(workdir / "limits.jsonl"), "--out", "-"],
                                env={"NEARWATCH_RECORD_MAX_FIELDS": "5",
                                     "NEARWATCH_RECORD_MAX_DEPTH": "2"})
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    # a record beyond a limit is still named by its (valid) id
    assert [a["id"] for a in answers] == ["manyfields", "deep", None]
    assert answers[0]["error"] == "record 1: record has 9 fields, more than the limit of 5"
    # one line number: the input line, then the column (not the decoder's "line 1")
    assert answers[2]["error"] == ("record 3 (line 4) is not valid JSON: Expecting property "
                                   "name enclosed in double quotes: column 2")
    assert result.exit_code == 1
    assert "every record of" in result.stderr and "(see the output above)" in result.stderr


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("nearwatch")
    output = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    for command in ("generate", "train", "score"):
        assert command in output.stdout


def test_bad_training_record_is_named(workdir: Path) -> None:
    _invoke("generate", "--out", str(workdir / "train-bad.jsonl"), "--n", "800")
    lines = (workdir / "train-bad.jsonl").read_text().splitlines()
    lines[17] = json.dumps(dict(json.loads(lines[17]), cpu_pct="n/a"))
    (workdir / "train-bad.jsonl").write_text("\n".join(lines) + "\n")
    assert any(json.loads(line)["is_anomaly"] for line in lines[:17])
    for labelled in ([], ["--label-field", "is_anomaly"]):  # anomalies before it: not counted
        result = CliRunner().invoke(main, ["train", "--data", str(workdir / "train-bad.jsonl"),
                                           "--out", str(workdir / "bad-model"), "--alpha",
                                           "0.05", "--delta", "0.1", "--encoder", "identity",
                                           *labelled])
        assert result.exit_code != 0
        assert "'r0000017'" in result.output and "field 'cpu_pct'" in result.output
        # its place in the file, counted as `score` counts (1-based), not in the split
        assert "record 18 " in result.output and "--skip-bad-records" in result.output
    lines[40] = "[1, 2]"
    (workdir / "train-bad.jsonl").write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(main, ["train", "--data", str(workdir / "train-bad.jsonl"),
                                       "--out", str(workdir / "skip-model"), "--encoder",
                                       "identity", "--label-field", "is_anomaly",
                                       "--skip-bad-records"])
    assert result.exit_code == 0, result.output
    assert ("skipped 2 of 784 training records the model cannot read; the first: record 18 "
            "id 'r0000017': field 'cpu_pct'") in result.stderr
    normals = sum(not json.loads(line)["is_anomaly"] for i, line in enumerate(lines)
                  if i not in (17, 40))
    assert f"trained on {normals} normal records" in result.stdout


def test_train_never_takes_the_anomalies_the_retraining_gate_judges_on(workdir: Path) -> None:
    """`--known-anomalies` takes labelled anomalies from the half that retraining trains on
    only: the other half (``held_out_for_judging``) judges challengers against this model."""
    from nearwatch.detector import Detector
    from nearwatch.detector.held_out import held_out_for_judging

    data = workdir / "labelled.jsonl"
    _invoke("generate", "--out", str(data), "--n", "1500", "--anomaly-rate", "0.02")
    labelled = [r for r in map(json.loads, data.read_text().splitlines()) if r["is_anomaly"]]
    judged = sum(held_out_for_judging(r) for r in labelled)
    assert 0 < judged < len(labelled) == 30
    result = CliRunner().invoke(main, [
        "train", "--data", str(data), "--out", str(workdir / "known"), "--encoder", "identity",
        "--label-field", "is_anomaly", "--known-anomalies", "100"])
    assert result.exit_code == 0, result.output
    assert (f"{30 - judged} known anomalies, {judged} held out for the retraining gate"
            in result.output)
    assert Detector.load(workdir / "known").n_known_anomalies_ == 30 - judged


def _fails(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code != 0 and result.exception is not None
    assert isinstance(result.exception, SystemExit), result.exception  # a message, no traceback
    return result.output


def test_bad_command_inputs_are_one_line_errors(workdir: Path) -> None:
    data = workdir / "named.jsonl"
    _invoke("generate", "--out", str(data), "--n", "700")
    out = str(workdir / "unused-model")
    for option in ("--label-field", "--class-field", "--id-field"):
        assert "has a field 'nosuch'" in _fails("train", "--data", str(data), "--out", out,
                                                option, "nosuch")
    assert "--known-anomalies needs --label-field" in _fails(
        "train", "--data", str(data), "--out", out, "--known-anomalies", "5")
    (workdir / "bad-schema.json").write_text("{not json")
    assert "not a JSON schema file" in _fails("train", "--data", str(data), "--out", out,
                                              "--schema", str(workdir / "bad-schema.json"))
    np.savez(workdir / "no-x.npz", Z=np.zeros((3, 2)))
    assert "needs an 'X' array" in _fails("train", "--data", str(workdir / "no-x.npz"),
                                          "--out", out)
    np.savez(workdir / "five.npz", X=np.zeros((3, 5), dtype=np.float32))
    assert "the model expects 4 columns" in _fails(
        "score", "--model", str(workdir / "npz-model"), "--data", str(workdir / "five.npz"),
        "--out", str(workdir / "five.jsonl"))
    assert "unnamed columns" in _fails(
        "score", "--model", str(workdir / "model"), "--data", str(workdir / "five.npz"),
        "--out", str(workdir / "five.jsonl"))
    (workdir / "other.jsonl").write_text('{"id": 1, "foo": 2}\nnot json\n')
    assert "every record of" in _fails("score", "--model", str(workdir / "model"), "--data",
                                       str(workdir / "other.jsonl"), "--out",
                                       str(workdir / "other-results.jsonl"))
    assert len((workdir / "other-results.jsonl").read_text().splitlines()) == 2  # still written
    (workdir / "blocker").write_text("a file, not a folder")
    assert "cannot write" in _fails(
        "score", "--model", str(workdir / "model"), "--data", str(data),
        "--out", str(workdir / "blocker" / "out.jsonl"))


@pytest.mark.parametrize(("line", "message"), [
    ("not json", "record 3 (line 3) is not valid JSON"),
    ("[1, 2]", "record 3 is not a JSON object (got list)"),
    ('{"id": "x", "latency_ms": NaN}', "record 3 field 'latency_ms': nan is not a finite number"),
])
def test_golden_refuses_a_file_with_a_bad_record(workdir: Path, line: str, message: str) -> None:
    # Checked before Redis is reached: nothing is pinned from a file with a bad line.
    lines = [json.dumps({"id": i, "latency_ms": 1.0 + i}) for i in range(4)]
    lines.insert(2, line)
    (workdir / "golden.jsonl").write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(full_main, ["golden", "--data", str(workdir / "golden.jsonl")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert message in result.output
