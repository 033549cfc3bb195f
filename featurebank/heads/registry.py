"""The head registry: names the ``fit`` command and :func:`featurebank.fit_heads` accept.

Each entry builds an estimator and carries the grid of its main regulariser that ``fit`` sweeps
on the validation split. scikit-learn classifiers come in a ``Pipeline`` after a
``StandardScaler`` (or a ``Normalizer`` for cosine k-NN), as they would be used by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.validation import has_fit_parameter

from ..exceptions import ParameterError
from ._base import standardization
from .logistic import LogisticHead, logistic_path
from .mlp import MLPHead, _project

__all__ = ["HeadSpec", "get_head", "get_head_spec", "list_heads"]

# a fitted setting of a grid: (estimator, its grid parameters, fit seconds)
Fitted = tuple[Any, dict[str, Any], float]


@dataclass(frozen=True)
class HeadSpec:
    """A registered head: how to build it, which settings ``fit`` tries and how.

    Attributes
    ----------
    name : str
    build : callable
        ``build(**params) -> estimator``; ``params`` are the grid's keys and ``device``/
        ``random_state`` where the estimator has them.
    grid : dict
        Parameter name to the values swept on the validation split.
    description : str
    graftable : bool
        Whether a fitted head becomes a network with :func:`featurebank.to_torch` (and can
        be fine-tuned).
    streams : bool
        Whether it fits on features streamed from a bank (``StreamedRows``): banks larger
        than memory.
    weights : bool
        Whether the head takes class and sample weights: ``build(class_weight=)``
        (scikit-learn's meanings: None, "balanced" or a dict) and ``fit_grid(sample_weight=)``.
    path : callable, optional
        ``path(X, y, candidates, shared=, on_fit=, sample_weight=, groups=, validation=,
        **build_kwargs)`` -> ``(estimator, seconds)`` per setting: fits the whole grid sharing
        work between its settings (the logistic path solves every C in the same passes and
        stops those that trail on ``validation``; the MLP grid shares one projection).
        ``shared`` is a dict the heads of one ``fit`` run share (the standardisation of
        ``X``). Without a path, each setting is built and fitted on its own.
    """

    name: str
    build: Callable[..., Any]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    description: str = ""
    graftable: bool = True
    path: Callable[..., list[Any]] | None = None
    streams: bool = False
    weights: bool = True

    def candidates(self) -> list[dict[str, Any]]:
        """Every combination of the grid, in order."""
        out: list[dict[str, Any]] = [{}]
        for key, values in self.grid.items():
            out = [{**c, key: v} for c in out for v in values]
        return out

    def fit_grid(self, X, y, *, on_fit: Callable[[int], Any] = lambda n: None,
                 shared: dict[str, Any] | None = None, sample_weight=None, groups=None,
                 validation=None, **build_kwargs) -> list[Fitted]:
        """Fit every setting of the grid on ``(X, y)`` (rows weighted by ``sample_weight``).

        ``on_fit(n)`` is called as settings finish (a progress bar's ``update``); ``shared``
        holds what the heads of one run compute once. ``groups`` (one per row: the image of
        an augmented view) keep a group's rows on one side of a head's own holdout (and the
        MLP visits one row of each an epoch). ``validation`` (``(X_val, y_val)``, the rows the
        sweep is selected on) lets a path stop its hopeless settings early (the logistic
        path's pruning). Returns ``(estimator, params, seconds)`` per setting, in
        :meth:`candidates` order.
        """
        if sample_weight is not None and not self.weights:
            raise ParameterError(f"head {self.name!r} takes no sample weights; fit it "
                                 f"without them, or choose a head that takes them.")
        candidates = self.candidates()
        if self.path is not None:
            fitted = self.path(X, y, candidates, shared={} if shared is None else shared,
                               on_fit=on_fit, sample_weight=sample_weight, groups=groups,
                               validation=validation, **build_kwargs)
            return [(est, params, secs) for (est, secs), params in zip(fitted, candidates)]
        fitted = []
        for params in candidates:
            est = self.build(**params, **build_kwargs)
            t = time.perf_counter()
            est.fit(X, y, **fit_weights(est, sample_weight))
            fitted.append((est, params, time.perf_counter() - t))
            on_fit(1)
        return fitted


def _logreg(C=1.0, device="auto", random_state=0, class_weight=None):
    return LogisticHead(C=C, max_iter=200, class_weight=class_weight, device=device,
                        random_state=random_state)


def _standardization(X, shared: dict[str, Any]):
    """The features' mean and scale, computed once per fit run for all heads."""
    if "standardization" not in shared:
        shared["standardization"] = standardization(X, True)
    return shared["standardization"]


def fit_weights(est, sample_weight) -> dict[str, Any]:
    """The ``fit`` keywords that give ``est`` the sample weights: ``sample_weight``, or for a
    Pipeline ``<step>__sample_weight`` for every step whose ``fit`` takes them (its
    StandardScaler too, as LogisticHead's standardisation weighs them)."""
    if sample_weight is None:
        return {}
    if isinstance(est, Pipeline):
        return {f"{name}__sample_weight": sample_weight for name, step in est.steps
                if has_fit_parameter(step, "sample_weight")}
    return {"sample_weight": sample_weight}


def _logreg_path(X, y, candidates, *, shared, on_fit, sample_weight=None, groups=None,
                 validation=None, **build_kwargs):
    """Every C in the same passes over X, from zero (the views' rows too: starting them from
    the centre rows' solutions was measured, and took as many passes or more; README), a C
    that trails on ``validation`` stopped early; the path's time is shared equally."""
    t = time.perf_counter()
    heads = logistic_path(X, y, [c["C"] for c in candidates], sample_weight=sample_weight,
                          standardization_=None if sample_weight is not None
                          else _standardization(X, shared), validation=validation,
                          **_logreg(**build_kwargs).get_params())
    on_fit(len(candidates))
    per = (time.perf_counter() - t) / len(candidates)
    return [(h, per) for h in heads]


def _mlp(hidden_layer_sizes=(512,), weight_decay=1e-4, device="auto", random_state=0,
         class_weight=None):
    return MLPHead(hidden_layer_sizes=hidden_layer_sizes, weight_decay=weight_decay,
                   dropout=0.2, n_components=_MLP_COMPONENTS, class_weight=class_weight,
                   sample_groups=True, device=device, random_state=random_state)


def _mlp_path(X, y, candidates, *, shared, on_fit, sample_weight=None, groups=None,
              validation=None, **build_kwargs):
    """Every setting trained on one projection of X, computed once (weighted, with sample
    weights), and on X's rows projected once; each setting's time includes an equal share of
    the projection; ``groups`` reach each network's holdout and epochs."""
    t = time.perf_counter()
    projection = _mlp(**candidates[0], **build_kwargs)._projection(
        X, standardization_=None if sample_weight is not None else _standardization(X, shared),
        sample_weight=sample_weight)
    projected = _project(X, *projection)
    share = (time.perf_counter() - t) / len(candidates)
    fitted = []
    for params in candidates:
        t = time.perf_counter()
        est = _mlp(**params, **build_kwargs)._fit(X, y, projection=projection,
                                                  sample_weight=sample_weight, groups=groups,
                                                  projected=projected)
        fitted.append((est, time.perf_counter() - t + share))
        on_fit(1)
    return fitted


def _sk_logreg(C=1.0, device=None, random_state=None, class_weight=None):
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000,
                                                              class_weight=class_weight))


def _linear_svc(C=0.01, device=None, random_state=0, class_weight=None):
    return make_pipeline(StandardScaler(), LinearSVC(C=C, class_weight=class_weight,
                                                     random_state=random_state))


def _ridge(alpha=1.0, device=None, random_state=None, class_weight=None):
    return make_pipeline(StandardScaler(), RidgeClassifier(alpha=alpha,
                                                           class_weight=class_weight))


def _knn(n_neighbors=10, device=None, random_state=None):
    return make_pipeline(Normalizer(), KNeighborsClassifier(n_neighbors=n_neighbors))


# The MLP grid trains on the standardised features' top principal directions, folded back
# into the first layer afterwards: a 4,096-wide first layer is 16x the work, and the measured
# accuracy held (docs/design.md).
_MLP_COMPONENTS = 256

# Standardised CNN features (thousands of dimensions) usually want strong regularisation (the
# measured path is in docs/design.md). Both logistic heads sweep the same values, so their rows
# compare.
_LOGISTIC_CS = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]

_REGISTRY = {spec.name: spec for spec in [
    HeadSpec("logreg", _logreg, {"C": _LOGISTIC_CS},
             "LogisticHead: multinomial logistic regression, float32 (preconditioned L-BFGS, "
             "every C in the same passes)", path=_logreg_path, streams=True),
    HeadSpec("mlp", _mlp, {"hidden_layer_sizes": [(512,), (1024,)],
                           "weight_decay": [1e-4, 1e-2]},
             "MLPHead: one hidden layer, dropout 0.2, AdamW, early stopping, on the top 256 "
             "principal directions", path=_mlp_path, streams=True),
    HeadSpec("sk-logreg", _sk_logreg, {"C": _LOGISTIC_CS},
             "scikit-learn LogisticRegression (lbfgs) after StandardScaler"),
    HeadSpec("linear-svc", _linear_svc, {"C": [0.001, 0.01, 0.1]},
             "scikit-learn LinearSVC after StandardScaler"),
    HeadSpec("ridge", _ridge, {"alpha": [1.0, 100.0, 10000.0]},
             "scikit-learn RidgeClassifier after StandardScaler"),
    HeadSpec("knn", _knn, {"n_neighbors": [5, 20]},
             "scikit-learn KNeighborsClassifier on L2-normalised features (cosine)",
             graftable=False, weights=False),
]}


def list_heads() -> list[str]:
    """Registered head names, in registry order."""
    return list(_REGISTRY)


def check_head_names(names) -> list[str]:
    """``names`` as a list, or ParameterError naming the unknown ones and the choices."""
    names = list(names)
    unknown = [h for h in names if h not in _REGISTRY]
    if unknown or not names:
        raise ParameterError(f"unknown heads {unknown}; expected names from {list_heads()}.")
    return names


def get_head_spec(name: str) -> HeadSpec:
    """The :class:`HeadSpec` registered as ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ParameterError(f"unknown head {name!r}; expected one of {list_heads()}.") from None


def get_head(name: str, **params) -> Any:
    """A new, unfitted estimator of the head registered as ``name``."""
    return get_head_spec(name).build(**params)
