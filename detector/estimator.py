"""sklearn / PyOD conventions for ``Detector``, without depending on scikit-learn.

``get_params`` returns every constructor argument exactly as stored, so ``sklearn.base.clone``
works (it rebuilds from the parameters and checks they come back identical); ``set_params``
refuses unknown names. ``decision_function`` is the anomaly score (higher = more anomalous),
``score_samples`` its negation (higher = more normal), as sklearn's outlier detectors have it.
The old spellings ``k`` and ``seed`` still work for one release, with a ``DeprecationWarning``.

>>> from nearwatch.detector import Detector
>>> Detector(n_neighbors=3).set_params(alpha=0.05).get_params()["alpha"]
0.05
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from typing import Any

import numpy as np

RENAMED = {"k": "n_neighbors", "seed": "random_state"}  # deprecated spelling → current name


def warn_renamed(old: str, stacklevel: int = 3) -> None:
    """The ``DeprecationWarning`` for a deprecated parameter or attribute name."""
    warnings.warn(
        f"Detector's {old!r} is deprecated and will be removed in the next release: "
        f"use {RENAMED[old]!r}", DeprecationWarning, stacklevel=stacklevel,
    )


class RenamedParameter:
    """A deprecated attribute name that reads and writes its new name, with a warning."""

    def __init__(self, current: str) -> None:
        self.current = current

    def __set_name__(self, owner: type, name: str) -> None:
        self.old = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        warn_renamed(self.old)
        return getattr(obj, self.current)

    def __set__(self, obj: Any, value: Any) -> None:
        warn_renamed(self.old)
        setattr(obj, self.current, value)


@functools.cache
def _constructor_arguments(init: Callable[..., Any]) -> tuple[str, ...]:
    """Read once per class: ``inspect.signature`` costs ~80 µs, and every scoring call checks
    the parameters against those of the fit (``_check_params_unchanged``)."""
    parameters = inspect.signature(init).parameters.values()
    return tuple(p.name for p in parameters
                 if p.name != "self" and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)


class EstimatorAPI:
    """Mixin: parameters by name, sklearn's score spellings and ``fit_predict``.

    The host class defines ``__init__`` (its positional-or-keyword arguments are the
    parameters, stored under their own names), ``fit``, ``score`` and ``predict``.
    """

    n_neighbors: int
    random_state: int

    k = RenamedParameter("n_neighbors")  # deprecated spellings (DeprecationWarning)
    seed = RenamedParameter("random_state")

    @classmethod
    def _param_names(cls) -> list[str]:
        """Constructor arguments (the deprecated keyword-only spellings excluded)."""
        return list(_constructor_arguments(cls.__init__))

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Every constructor argument, as stored (no parameter is itself an estimator)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Any:
        """Set constructor arguments by name; returns ``self``. Unknown names: ``ValueError``."""
        valid = self._param_names()
        for name in params:
            if name not in valid and name not in RENAMED:
                raise ValueError(
                    f"invalid parameter {name!r} for {type(self).__name__}; valid parameters: "
                    f"{', '.join(valid)}"
                )
        for name, value in params.items():
            if name in RENAMED:
                warn_renamed(name)
                name = RENAMED[name]
            setattr(self, name, value)
        return self

    def _check_params_unchanged(self) -> None:
        """A fitted model scores with the parameters it was fitted with: after ``set_params``
        (or an attribute assignment) changed one, its threshold and references no longer
        match it, and a saved bundle would not load. ``progress`` may change."""
        from .errors import NotFittedError

        at_fit = getattr(self, "_params_at_fit", None)
        if at_fit is None:
            return
        now = self._config()
        if now != at_fit:
            changed = sorted(name for name in now if now[name] != at_fit.get(name))
            raise NotFittedError(
                f"{', '.join(changed)} changed after this {type(self).__name__} was fitted: "
                f"its threshold and references belong to the old value(s); call fit() again "
                f"(or set them back)")

    def _config(self) -> dict[str, Any]:
        """JSON form of the parameters that decide the model (bundle manifest, model version)."""
        config = self.get_params()
        del config["progress"]
        if is_dataclass(config["training"]) and not isinstance(config["training"], type):
            config["training"] = asdict(config["training"])
        label_fields = config["label_fields"]
        config["label_fields"] = [label_fields] if isinstance(label_fields, str) else list(
            label_fields
        )
        return config

    def __repr__(self) -> str:
        params = self.get_params()
        shown = ", ".join(f"{name}={params[name]!r}" for name in ("n_neighbors", "metric", "alpha")
                          if name in params)
        fitted = getattr(self, "n_reference_", None)
        return f"{type(self).__name__}({shown}" + (
            f", n_reference_={fitted})" if fitted is not None else ")")

    def decision_function(self, X: Any) -> np.ndarray:
        """sklearn/PyOD spelling of ``score``: higher = more anomalous."""
        return self.score(X)  # type: ignore[attr-defined]

    def score_samples(self, X: Any) -> np.ndarray:
        """sklearn outlier-detector convention: ``-score(X)``, higher = more normal."""
        return -self.score(X)  # type: ignore[attr-defined]

    def fit_predict(self, X: Any, y: Any = None, **fit_kwargs: Any) -> np.ndarray:
        """``fit(X, y, **fit_kwargs).predict(X)``: ``True`` where a training record is flagged."""
        data = as_records(X)
        return self.fit(data, y, **fit_kwargs).predict(data)  # type: ignore[attr-defined]


def as_records(X: Any, name: str = "X", fitting: bool = False) -> Any:
    """``X`` as the library reads it: an array as is, any other iterable as a list; a single
    record or a text is a clear error (they iterated into field names or characters), as is
    an array that is not 2-D or holds complex numbers, and (``fitting``) no records at all.

    >>> as_records({"latency_ms": 3.0})
    Traceback (most recent call last):
    ...
    ValueError: X is a single record (a dict): pass a list of records, e.g. [record]
    >>> as_records(np.zeros((7, 2, 2)))
    Traceback (most recent call last):
    ...
    ValueError: X is a 3-D array of shape (7, 2, 2): pass a 2-D array (records x fields)
    """
    if isinstance(X, np.ndarray):
        if X.ndim != 2:
            raise ValueError(
                f"{name} is a {X.ndim}-D array of shape {X.shape}: pass a 2-D array (records x "
                f"fields)" + (", e.g. X.reshape(-1, 1) for one field" if X.ndim == 1 else ""))
        if np.iscomplexobj(X):
            raise ValueError(f"{name} holds complex numbers ({X.dtype}): nearwatch reads real "
                             "numbers only")
        if fitting and 0 in X.shape:
            raise ValueError(f"{name} of shape {X.shape} holds no values: fit needs normal "
                             "records with at least one field")
        return X
    if isinstance(X, dict):
        raise ValueError(f"{name} is a single record (a dict): pass a list of records, "
                         "e.g. [record]")
    if isinstance(X, str | bytes):
        raise ValueError(f"{name} is a {type(X).__name__}: pass a list of records (parsed "
                         "JSON objects) or a numeric array")
    if hasattr(X, "to_dict") and hasattr(X, "columns"):  # a pandas DataFrame: its rows
        return dataframe_records(X, name, fitting)
    records = list(X)
    if fitting and not records:
        raise ValueError(f"{name} holds no records: fit needs normal records to learn from")
    return records


def dataframe_records(frame: Any, name: str = "X", fitting: bool = False) -> list[dict]:
    """A DataFrame's rows as records, one field per column (named by ``str``), a missing
    value (NaN, NaT, None) as None: iterating it gave its column names, read as records.

    >>> class Frame:  # the two things read of a pandas DataFrame
    ...     columns = ["a", 1]
    ...     def to_dict(self, orient): return [{"a": 1.5, 1: float("nan")}]
    >>> dataframe_records(Frame())
    [{'a': 1.5, '1': None}]
    """
    names = [str(column) for column in frame.columns]
    if len(set(names)) < len(names):  # to_dict keeps one of them, silently
        shared = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{name} has columns with the same name (as text): {shared}")
    rows = frame.to_dict("records")
    if fitting and not rows:
        raise ValueError(f"{name} (a DataFrame) holds no rows: fit needs normal records")
    return [{str(key): None if _missing(value) else value for key, value in row.items()}
            for row in rows]


def _missing(value: Any) -> bool:
    """NaN, NaT and None: pandas' missing values (a string or a number that is not NaN is
    kept as it is)."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return True
    try:
        return bool(value != value)
    except (TypeError, ValueError):  # comparisons that do not return a bool
        return False
