"""Estimator API: y as anomaly flags, sklearn conventions, renamed parameters, uncertified fits,
and fitted state that survives save/load whole."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nearwatch.detector import BundleError, CalibrationError, Detector
from nearwatch.detector.errors import CalibrationWarning
from nearwatch.detector.fitting import route_anomaly_flags

FAST_TRAINING: dict[str, Any] = {"max_steps": 20, "hidden": (16,), "embedding_dim": 4,
                                 "eval_every": 10, "seed": 0}


def _flagged_data(n_normal: int = 500, n_anomaly: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian normals and far anomalies, interleaved (flags not sorted to the end)."""
    rng = np.random.default_rng(3)
    x = np.vstack([rng.normal(size=(n_normal, 3)), rng.normal(6.0, 0.5, size=(n_anomaly, 3))])
    y = np.r_[np.zeros(n_normal, dtype=int), np.ones(n_anomaly, dtype=int)]
    order = rng.permutation(len(x))
    return x[order], y[order]


def _fast_training() -> Any:
    from nearwatch.detector.embedding.training import TrainingConfig

    return TrainingConfig(**FAST_TRAINING)


# ---------------------------------------------------------------- y: anomaly flags
def test_y_flags_route_rows_to_known_anomalies() -> None:
    x, y = _flagged_data()
    params = {"encoder": "metric", "training": _fast_training(), "alpha": 0.05, "delta": 0.1}
    with_y = Detector(**params).fit(x, y)
    explicit = Detector(**params).fit(x[y == 0], anomalies=x[y == 1])
    ignored = Detector(**params).fit(x[y == 0])
    assert with_y.n_reference_ == int((y == 0).sum()) == 500
    assert with_y.n_known_anomalies_ == explicit.n_known_anomalies_ == 12
    assert ignored.n_known_anomalies_ == 0
    assert with_y.training_mode_ == explicit.training_mode_ == "self_supervised"
    probe = np.random.default_rng(9).normal(size=(50, 3)) * 2
    np.testing.assert_array_equal(with_y.score(probe), explicit.score(probe))
    assert not np.array_equal(with_y.score(probe), ignored.score(probe))  # y was used


@pytest.mark.parametrize("as_flags", [
    lambda y: y.astype(bool), lambda y: y.tolist(), lambda y: y.astype(np.float32),
])
def test_y_accepts_bools_ints_and_exact_float_flags(as_flags: Any) -> None:
    x, y = _flagged_data()
    detector = Detector(encoder="identity", alpha=0.05, delta=0.1).fit(x, as_flags(y))
    assert detector.n_reference_ == 500 and detector.n_known_anomalies_ == 12


def test_y_combines_with_anomalies_and_keeps_original_row_ids() -> None:
    x, y = _flagged_data()
    extra = np.full((3, 3), 9.0)
    detector = Detector(encoder="identity", alpha=0.05, delta=0.1).fit(x, y, anomalies=extra)
    assert detector.n_known_anomalies_ == 15
    # records without ids are named by their row in X, not by their row among the normals
    assert set(detector.reference_ids_) == set(np.flatnonzero(y == 0).tolist())


def test_supervision_indices_refer_to_x_and_are_remapped() -> None:
    x, y = np.arange(12.0).reshape(6, 2), np.array([0, 1, 0, 0, 1, 0])
    routed = route_anomaly_flags(x, y, list("abcdef"), [(0, 5, 1), (2, 3, 0)], [(5, 0, 3)], None)
    assert routed.labels == ["a", "c", "d", "f"]
    assert routed.pairs.tolist() == [[0, 3, 1], [1, 2, 0]]
    assert routed.triplets.tolist() == [[3, 0, 2]]
    assert routed.rows.tolist() == [0, 2, 3, 5]
    np.testing.assert_array_equal(routed.anomalies, x[[1, 4]])
    with pytest.raises(ValueError, match=r"pairs\[1\] = \[2, 4, 0\] refers to record 4, which y"):
        route_anomaly_flags(x, y, None, [(0, 2, 1), (2, 4, 0)], None, None)
    with pytest.raises(ValueError, match=r"triplets\[0\] = \[1, 0, 2\] refers to record 1"):
        route_anomaly_flags(x, y, None, None, [(1, 0, 2)], None)
    with pytest.raises(ValueError, match=r"pairs\[0\] = \[0, 6, 1\] refers to a record outside"):
        route_anomaly_flags(x, y, None, [(0, 6, 1)], None, None)
    with pytest.raises(ValueError, match="labels has 4 entries for 6 records"):
        route_anomaly_flags(x, y, list("abcd"), None, None, None)


@pytest.mark.parametrize("pair", [(0, 1.9, 1), (0.5, 1, 1), (0, 1), (0, 1, "maybe")])
def test_pairs_that_are_not_three_whole_numbers_are_refused(pair: tuple[Any, ...]) -> None:
    """(0, 1.9, 1) was truncated to (0, 1); (0, 1) said "cannot reshape array"."""
    x = np.random.default_rng(0).normal(size=(40, 3))
    with pytest.raises(ValueError, match=r"pairs\[0\] = .*: expected \(i, j, similar\)"):
        Detector(encoder="identity", alpha=0.2).fit(x, pairs=[pair])
    with pytest.raises(ValueError, match=r"pairs\[0\] = .*: expected \(i, j, similar\)"):
        Detector(encoder="identity", alpha=0.2).fit(x, np.zeros(40), pairs=[pair])


def test_pairs_on_calibration_records_are_reported_not_silently_dropped() -> None:
    from nearwatch.detector.embedding.supervision import FitSupervision

    with pytest.warns(UserWarning, match="1 pairs/triplets name a calibration record"):
        kept = FitSupervision.restrict(None, [(0, 2, True), (1, 3, False)], None,
                                       reference_rows=np.array([0, 2, 3]), n=4)
    assert kept.mode == "weakly_supervised" and kept.pairs.tolist() == [[0, 1, 1]]
    with pytest.warns(UserWarning, match="none is left, so the encoder trains self-supervised"):
        lost = FitSupervision.restrict(None, None, [(1, 0, 2)],
                                       reference_rows=np.array([0, 2, 3]), n=4)
    assert lost.mode == "self_supervised"


def test_y_with_pairs_trains_weakly_supervised() -> None:
    x, y = _flagged_data()
    normal = np.flatnonzero(y == 0)
    pairs = [(int(normal[i]), int(normal[i + 1]), i % 2) for i in range(0, 40, 2)]
    detector = Detector(encoder="identity", alpha=0.05, delta=0.1).fit(x, y, pairs=pairs)
    assert detector.training_mode_ == "weakly_supervised"
    anomaly = int(np.flatnonzero(y == 1)[0])
    with pytest.raises(ValueError, match=f"refers to record {anomaly}, which y flags"):
        Detector(encoder="identity").fit(x, y, pairs=[(int(normal[0]), anomaly, 0)])


@pytest.mark.parametrize(("bad_y", "message"), [
    (lambda n: [0] * (n - 1) + [2], r"0/1 anomaly flags .*got 2 at position 511"),
    (lambda n: [0.5] * n, r"0/1 anomaly flags .*got 0\.5 at position 0"),
    (lambda n: [0, 1] * 3, r"one 0/1 anomaly flag per record of X \(512\), got shape \(6,\)"),
    (lambda n: np.zeros((n, 1)), r"one 0/1 anomaly flag per record of X \(512\)"),
    (lambda n: ["normal"] * n, r"got 'normal' at position 0; class labels .* labels="),
    (lambda n: [np.nan] * n, r"0/1 anomaly flags .*got nan"),
    (lambda n: [1] * n, "y flags every record of X as an anomaly"),
])
def test_bad_y_is_refused_with_a_clear_message(bad_y: Any, message: str) -> None:
    x, _ = _flagged_data()
    with pytest.raises(ValueError, match=message):
        Detector(encoder="identity").fit(x, bad_y(len(x)))


def test_class_labels_passed_positionally_are_not_taken_as_flags() -> None:
    x, _ = _flagged_data()
    classes = [i % 3 for i in range(len(x))]
    with pytest.raises(ValueError, match="class labels of normal records .* go in labels="):
        Detector(encoder="identity").fit(x, classes)


# ---------------------------------------------------------------- sklearn conventions
def test_clone_get_params_set_params_round_trip() -> None:
    from sklearn.base import clone

    params = {"n_neighbors": 3, "alpha": 0.05, "label_fields": ["label"], "schema": None,
              "training": _fast_training(), "random_state": 7, "strict": True}
    detector = Detector(**params)
    got = detector.get_params()
    assert set(got) == {
        "n_neighbors", "metric", "alpha", "delta", "calibration_fraction", "encoder",
        "id_field", "label_fields", "max_onehot", "hash_buckets", "schema", "index",
        "flat_max", "training", "random_state", "progress", "strict", "compress_min",
            "density_power",
    }
    assert all(got[name] is value for name, value in params.items())  # stored as given
    twin = clone(detector)
    assert twin is not detector and twin.get_params() == got
    assert detector.set_params(n_neighbors=9, metric="cosine") is detector
    assert (detector.n_neighbors, detector.metric) == (9, "cosine")
    with pytest.raises(ValueError, match="invalid parameter 'neighbours' for Detector"):
        detector.set_params(neighbours=3)
    fitted = Detector(encoder="identity", alpha=0.05, delta=0.1).fit(_flagged_data()[0])
    assert not hasattr(clone(fitted), "reference_index_")


def test_a_fitted_detector_refuses_to_score_with_changed_parameters(tmp_path: Path) -> None:
    """set_params after fit used to score with the new k and the old threshold (certified_
    still True, the flag rate 20 times alpha) and save a bundle that load() refused."""
    from nearwatch.detector import NotFittedError

    x = _flagged_data()[0]
    detector = Detector(encoder="identity", alpha=0.05, delta=0.1, n_neighbors=3).fit(x)
    scores = detector.score(x[:20])
    detector.set_params(progress=True)  # not a model parameter: scoring goes on
    np.testing.assert_array_equal(detector.score(x[:20]), scores)
    detector.set_params(n_neighbors=50, alpha=0.5)
    for call in (lambda: detector.score(x[:5]), lambda: detector.predict(x[:5]),
                 lambda: detector.save(tmp_path / "changed")):
        with pytest.raises(NotFittedError, match=r"alpha, n_neighbors changed after this "
                                                 r"Detector was fitted: .* call fit\(\) again"):
            call()
    assert not (tmp_path / "changed").exists()
    detector.set_params(n_neighbors=3, alpha=0.05)  # set back: scores as fitted
    np.testing.assert_array_equal(detector.score(x[:20]), scores)
    detector.save(tmp_path / "bundle")
    loaded = Detector.load(tmp_path / "bundle")
    np.testing.assert_array_equal(loaded.score(x[:20]), scores)
    with pytest.raises(NotFittedError, match="delta changed"):
        loaded.set_params(delta=0.2).score(x[:5])
    refit = loaded.fit(x)  # fitting again takes the new value
    assert refit.delta == 0.2 and refit.score(x[:5]).shape == (5,)


@pytest.mark.parametrize(("X", "params", "message"), [
    (np.zeros(700), {}, r"X is a 1-D array of shape \(700,\): .* X.reshape\(-1, 1\)"),
    (np.zeros((1000, 2, 2)), {}, r"X is a 3-D array of shape \(1000, 2, 2\)"),
    (np.zeros((10, 0)), {}, r"X of shape \(10, 0\) holds no values"),
    (np.empty((0, 4)), {}, r"X of shape \(0, 4\) holds no values"),
    ([], {}, "X holds no records: fit needs normal records"),
    (np.zeros((1, 4)), {}, "1 normal records leave 1 references beside 0 calibration records"),
    (np.zeros((700, 3), complex), {}, "X holds complex numbers"),
    (np.ones((700, 3)), {"alpha": "0.01"}, "alpha must be a number in .* got '0.01'"),
    (np.ones((700, 3)), {"delta": True}, "delta must be a number in \\(0, 1\\), got True"),
])
def test_bad_training_input_is_named_as_the_caller_gave_it(X: Any, params: dict[str, Any],
                                                           message: str) -> None:
    """Checked before the reference/calibration split, which used to report the shape of a
    part (700 rows as 401) or blame calibration for an empty X."""
    with pytest.raises(ValueError, match=message):
        Detector(encoder="identity", **params).fit(X)
    fitted = Detector(encoder="identity", alpha=None).fit(np.ones((40, 3)) + np.eye(40, 3))
    with pytest.raises(ValueError, match="n_neighbours must be a positive integer, got -1"):
        fitted.explain(np.ones((1, 3)), -1)


def test_nan_class_labels_are_refused() -> None:
    """They trained as one class of their own ("nan"), without a word."""
    x = np.random.default_rng(0).normal(size=(700, 3))
    labels: list[Any] = [i % 2 for i in range(700)]
    labels[5] = labels[9] = float("nan")
    with pytest.raises(ValueError, match=r"labels hold nan \(2 of 700\): a class label"):
        Detector(encoder="identity").fit(x, labels=labels)


def test_decision_function_score_samples_and_fit_predict() -> None:
    x, y = _flagged_data()
    detector = Detector(encoder="identity", alpha=0.05, delta=0.1)
    flags = detector.fit_predict(x, y)
    np.testing.assert_array_equal(flags, detector.predict(x))
    assert flags.dtype == bool and flags[y == 1].all()
    scores = detector.score(x)
    np.testing.assert_array_equal(detector.decision_function(x), scores)
    np.testing.assert_array_equal(detector.score_samples(x), -scores)


def test_n_features_in_counts_input_columns_or_fields() -> None:
    x = np.random.default_rng(0).normal(size=(400, 5))
    assert Detector(encoder="identity", alpha=None).fit(x).n_features_in_ == 5
    records = [{"id": f"r{i}", "bytes": float(i % 17), "proto": "tcp" if i % 3 else "udp",
                "label": 0, "empty": None} for i in range(400)]
    detector = Detector(encoder="identity", alpha=None, label_fields=("label",)).fit(records)
    assert detector.n_features_in_ == 2  # bytes, proto: not the id, label or all-null field
    assert detector.n_features_ > detector.n_features_in_  # proto is one-hot


def test_deprecated_k_and_seed_warn_and_map() -> None:
    with pytest.warns(DeprecationWarning, match="'k' is deprecated .* use 'n_neighbors'"):
        detector = Detector(k=3)
    with pytest.warns(DeprecationWarning, match="'seed' is deprecated .* use 'random_state'"):
        seeded = Detector(seed=11)
    assert detector.n_neighbors == 3 and seeded.random_state == 11
    assert "k" not in detector.get_params() and "seed" not in seeded.get_params()
    with pytest.warns(DeprecationWarning, match="'k' is deprecated"):
        assert detector.k == 3
    with pytest.warns(DeprecationWarning, match="'seed' is deprecated"):
        assert seeded.seed == 11
    with pytest.warns(DeprecationWarning, match="'k' is deprecated"):
        detector.set_params(k=4)
    assert detector.n_neighbors == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new names, fit and score warn about nothing
        fitted = Detector(n_neighbors=4, random_state=1, encoder="identity", alpha=None)
        fitted.fit(_flagged_data()[0]).score_records([{"f0": 0.0, "f1": 0.0, "f2": 0.0}])


# ---------------------------------------------------------------- too few normals to certify
def test_uncertified_fit_reports_the_bound_it_achieves() -> None:
    x = np.random.default_rng(0).normal(size=(200, 4))
    with pytest.warns(CalibrationWarning, match=r"needs at least 598 normal records \(299 for"):
        detector = Detector(encoder="identity", alpha=0.01, delta=0.05).fit(x)
    assert detector.certified_ is False
    assert detector.n_calibration_ == 100  # calibration takes the most it may: half
    assert detector.calibrator_.order_statistic_ == 100
    assert detector.threshold_ == detector.calibrator_.calibration_scores_[-1]
    assert detector.fpr_bound_ == pytest.approx(1 - 0.05 ** (1 / 100), abs=1e-9)
    result = detector.score_records([{"f0": 9.0, "f1": 9.0, "f2": 9.0, "f3": 9.0}])[0]
    assert result["certified"] is False and result["fpr_bound"] == detector.fpr_bound_
    assert result["is_anomaly"] is True
    with pytest.raises(CalibrationError, match="at least 299 calibration records"):
        Detector(encoder="identity", alpha=0.01, delta=0.05, strict=True).fit(x)


def test_too_few_records_for_the_neighbours_says_how_many_it_has_and_needs() -> None:
    """7 records: 3 calibrate, 4 references, fewer than n_neighbors=5; 8 records fit."""
    x = np.random.default_rng(0).normal(size=(8, 3))
    with pytest.raises(ValueError, match="7 normal records leave 4 references beside 3 "
                       "calibration records; n_neighbors=5 needs at least 5"):
        Detector(encoder="identity", alpha=None).fit(x[:7])
    assert Detector(encoder="identity", alpha=None).fit(x).n_calibration_ == 3


def test_certified_fit_says_so_and_does_not_warn() -> None:
    x = np.random.default_rng(0).normal(size=(1_000, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        detector = Detector(encoder="identity", alpha=0.01, delta=0.05, strict=True).fit(x)
    assert detector.certified_ is True and detector.fpr_bound_ <= 0.01


@pytest.mark.parametrize("random_state", [0, 1, 2])
def test_uncertified_threshold_keeps_its_reported_bound(random_state: int) -> None:
    """Realised FPR on 20 000 fresh normals stays below fpr_bound_ (≈ 2.95 %).

    The bound holds with probability 1 - delta over the calibration draw; on top, the
    realised rate of 20 000 normals has a standard error of at most 0.12 %: tolerance 3 SE.
    """
    rng = np.random.default_rng(100 + random_state)
    train, fresh = rng.normal(size=(200, 4)), rng.normal(size=(20_000, 4))
    with pytest.warns(CalibrationWarning):
        detector = Detector(encoder="identity", alpha=0.01, delta=0.05,
                            random_state=random_state).fit(train)
    realised = float(detector.predict(fresh).mean())
    tolerance = 3 * np.sqrt(detector.fpr_bound_ * (1 - detector.fpr_bound_) / len(fresh))
    assert realised <= detector.fpr_bound_ + tolerance


# ---------------------------------------------------------------- state
def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if hasattr(a, "to_state"):  # components: their state (and weights) decide their behaviour
        if type(a) is not type(b) or a.to_state() != b.to_state():
            return False
        if hasattr(a, "tensors"):
            mine, theirs = a.tensors(), b.tensors()
            return mine.keys() == theirs.keys() and all(
                np.array_equal(t, theirs[name]) for name, t in mine.items()
            )
        return True
    return type(a) is type(b) and a == b


def _fitted(detector: Detector) -> dict[str, Any]:
    return {name: value for name, value in vars(detector).items()
            if name.endswith("_") and not name.startswith("_")}


@pytest.mark.parametrize("encoder", ["identity", "metric"])
def test_every_fitted_attribute_survives_save_and_load(encoder: str, tmp_path: Path) -> None:
    x, y = _flagged_data()
    params = {"training": _fast_training()} if encoder == "metric" else {}
    detector = Detector(encoder=encoder, alpha=0.05, delta=0.1, **params).fit(x, y)
    detector.save(tmp_path / "model")
    assert (tmp_path / "model" / "encoder.npz").exists() == (encoder == "metric")
    loaded = Detector.load(tmp_path / "model")
    before, after = _fitted(detector), _fitted(loaded)
    assert len(before) >= 20 and set(after) == set(before)
    different = [name for name in before if not _same(before[name], after[name])]
    assert different == []
    assert loaded.get_params() == detector.get_params()
    np.testing.assert_array_equal(loaded.score(x), detector.score(x))


def test_fitted_attributes_must_be_declared_to_be_saved_or_loaded() -> None:
    """A new fitted attribute is never dropped silently, and a manifest sets no other."""
    detector = Detector(encoder="identity", alpha=0.05, delta=0.1).fit(_flagged_data()[0])
    manifest, files = detector.to_state()
    detector.drift_baseline_ = 0.25
    with pytest.raises(TypeError, match=r"\['drift_baseline_'\] are not declared"):
        detector.to_state()
    extra = {**manifest, "fitted": {**manifest["fitted"], "predict_": "anything"}}
    with pytest.raises(BundleError, match="fitted state names .*predict_"):
        Detector.from_state(extra, files)
    wrong_type = {**manifest, "fitted": {**manifest["fitted"], "n_reference_": "many"}}
    with pytest.raises(BundleError, match="fitted n_reference_ is 'many'"):
        Detector.from_state(wrong_type, files)
    del detector.drift_baseline_
    detector.n_reference_ = np.int64(5)  # JSON cannot carry its type unchanged
    with pytest.raises(TypeError, match="fitted attribute n_reference_ .*cannot be saved"):
        detector.to_state()

def test_identity_detector_needs_no_torch(tmp_path: Path) -> None:
    script = f"""
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not installed here")
sys.meta_path.insert(0, NoTorch())
import numpy as np
from nearwatch import Detector
x = np.random.default_rng(0).normal(size=(400, 3))
detector = Detector(encoder="identity", alpha=0.05, delta=0.1).fit(x)
detector.save({str(tmp_path / "model")!r})
loaded = Detector.load({str(tmp_path / "model")!r})
assert np.array_equal(loaded.score(x[:20]), detector.score(x[:20]))
assert loaded.score_records([{{"f0": 0.0, "f1": 0.0, "f2": 0.0}}])[0]["certified"] is True
assert "torch" not in sys.modules
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "model" / "encoder.npz").exists()


def test_cli_train_reports_certified_and_can_allow_uncertified(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from nearwatch.worker.cli import main

    runner = CliRunner()
    data = tmp_path / "records.jsonl"
    assert runner.invoke(main, ["generate", "--out", str(data), "--n", "300"]).exit_code == 0
    train = ["train", "--data", str(data), "--encoder", "identity"]
    refused = runner.invoke(main, [*train, "--out", str(tmp_path / "refused"), "--strict"])
    assert refused.exit_code != 0 and "299 calibration records" in refused.output
    loose = runner.invoke(main, [*train, "--out", str(tmp_path / "m")])  # the default
    assert loose.exit_code == 0, loose.output
    assert "certified_=False" in loose.output and "needs at least 598 normal" in loose.output
    assert Detector.load(tmp_path / "m").certified_ is False


def test_score_records_takes_the_arrays_score_takes() -> None:
    """score_records answered every row of an array with "not a JSON object"."""
    x = np.random.default_rng(1).normal(size=(700, 4))
    detector = Detector(encoder="identity").fit(x)
    bad = x[:3].copy()
    bad[1, 2] = np.nan
    results = detector.score_records(bad)
    assert [r.get("score") for r in results[::2]] == pytest.approx(
        detector.score(bad[::2]).tolist())
    assert results[1]["error"] == "record 1: field 'f2': nan is not a finite number (a missing "\
        "value is null)"
    with pytest.raises(ValueError, match=r"needs shape \(n, 4\), got \(3, 3\)"):
        detector.score_records(x[:3, :3])


def test_a_single_record_or_a_text_is_refused_by_name() -> None:
    """``score({"f0": 1})`` iterated the dict into its keys: "record 0: not a JSON object
    (got str)"; ``fit(dict)`` complained about too few references."""
    detector = Detector(encoder="identity").fit(np.random.default_rng(0).random((700, 2)))
    record = {"f0": 0.5, "f1": 0.5}
    for call in (detector.score, detector.predict, detector.explain, Detector().fit):
        with pytest.raises(ValueError, match=r"X is a single record \(a dict\)"):
            call(record)  # type: ignore[operator]
    with pytest.raises(ValueError, match=r"records is a single record"):
        detector.score_records(record)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="X is a str: pass a list of records"):
        detector.score("f0,f1")
    assert detector.score([record]).shape == (1,)


class _Frame:
    """What the library reads of a pandas DataFrame (pandas is not a dependency)."""

    def __init__(self, rows: list[dict[Any, Any]]) -> None:
        self.rows = rows
        self.columns = list(rows[0]) if rows else []

    def __iter__(self) -> Any:  # as a DataFrame iterates: its column names
        return iter(self.columns)

    def to_dict(self, orient: str) -> list[dict[Any, Any]]:
        assert orient == "records"
        return [dict(row) for row in self.rows]


def test_a_dataframe_is_read_as_its_rows_with_nan_as_missing() -> None:
    """A DataFrame iterated into its column names: 1 000 rows of 3 columns were "3 normal
    records", of 12 columns "record 0 is not a JSON object (got str)"."""
    rng = np.random.default_rng(0)
    rows = [{"latency": float(v), "service": "api" if v > 0 else "db", 7: float(w)}
            for v, w in rng.normal(size=(1_000, 2))]
    rows[3]["latency"] = float("nan")  # pandas' missing value
    detector = Detector(encoder="identity", alpha=0.05, delta=0.1).fit(_Frame(rows))
    assert detector.n_reference_ == 1_000  # references and calibration records: every row
    assert [f["name"] for f in detector.feature_encoder_.fields_] == ["7", "latency", "service"]
    as_list = [{str(k): (None if v != v else v) for k, v in row.items()} for row in rows[:20]]
    np.testing.assert_array_equal(detector.score(_Frame(rows[:20])), detector.score(as_list))
    split = Detector(encoder="identity", alpha=0.05, delta=0.1).fit(
        _Frame(rows[:700]), calibration=_Frame(rows[700:]))
    assert split.n_calibration_ == 300
    same = _Frame([{"a": 1.0, "b": 2.0}])
    same.columns = ["a", "a"]
    with pytest.raises(ValueError, match=r"columns with the same name \(as text\): \['a'\]"):
        detector.score(same)
