"""MLPHead: a small multi-layer perceptron on cached features, trained in torch.

AdamW on shuffled mini-batches, on the chosen device, float32. Early stopping watches the loss
on a stratified held-out fraction of the training rows and restores the best weights. Training
is deterministic for a given ``random_state``: weight init, shuffling and dropout draw from a
seeded generator, and the global RNG state is left as it was. The fitted layers are kept as
numpy arrays (``coefs_``, ``intercepts_``, as in scikit-learn's ``MLPClassifier``) with the
standardisation folded into the first layer, so prediction needs no torch and gives the same
result for a row whatever batch it comes in.
"""

from __future__ import annotations

import copy
import warnings

import h5py
import numpy as np
import torch
from scipy.special import erf
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
from torch import nn

from .._io import (
    NON_NEGATIVE_FLOAT,
    POSITIVE_INT,
    Interval,
    as_float32,
    check_choice,
    resolve_device,
)
from ..exceptions import ParameterError
from ..rows import StreamedRows, chunks, is_streamed
from ._base import (
    ProbaMixin,
    affine_to_torch,
    blockwise_mean_scale,
    check_classes,
    check_sample_weight,
    fold_standardization,
    on_device,
    principal_directions,
    row_weights,
    standardization,
)

__all__ = ["MLPHead"]

_ACTIVATIONS = {
    "relu": (nn.ReLU, lambda a: np.maximum(a, 0)),
    "gelu": (nn.GELU, lambda a: 0.5 * a * (1 + erf(a / np.sqrt(2)))),
    "tanh": (nn.Tanh, np.tanh),
}


_UNIT = Interval(float, 0, 1, closed="left")


def _project(X, mean: np.ndarray, scale: np.ndarray, V: np.ndarray) -> np.ndarray:
    """``((X - mean) / scale) @ V`` in float32, a chunk of rows at a time (X may be on disk)."""
    Vs = (V / scale[:, None]).astype(np.float32)
    shift = ((mean / scale) @ V).astype(np.float32)
    out = np.empty((X.shape[0], V.shape[1]), np.float32)
    for s, chunk in chunks(X):
        np.matmul(chunk, Vs, out=out[s:s + len(chunk)])
    out -= shift
    return out


class _MemoryRows:
    """Feature rows held as one tensor on the device: on CUDA (or with ``compact``) in
    float16 when that is lossless (a float16 bank's rows: half the device memory), else
    float32; batches are float32 either way."""

    def __init__(self, X: np.ndarray, device: torch.device, compact: bool | None = None):
        compact = device.type == "cuda" if compact is None else compact
        self.X = (on_device(X, device) if compact
                  else torch.as_tensor(X, dtype=torch.float32).to(device))
        self.n_features = self.X.shape[1]

    def take(self, idx: np.ndarray) -> torch.Tensor:
        return self.X[torch.as_tensor(idx, device=self.X.device)].float()

    def standardization(self, train: np.ndarray, standardize: bool, sample_weight=None):
        # the training rows only; on the CPU as numpy arrays, which the shared helper reduces
        # with BLAS (faster than torch there)
        X = self.X.numpy() if self.X.device.type == "cpu" else self.X
        mean, scale = standardization(X, standardize, rows=train, sample_weight=sample_weight)
        return (torch.from_numpy(mean).float().to(self.X.device),
                torch.from_numpy(scale).float().to(self.X.device))

    def epoch(self, train: np.ndarray, batch_size: int, gen: torch.Generator):
        perm = train[torch.randperm(len(train), generator=gen).numpy()]
        for s in range(0, len(perm), batch_size):
            idx = perm[s:s + batch_size]
            yield self.take(idx), torch.as_tensor(idx, device=self.X.device)


class _StreamedRows:
    """Feature rows read from an HDF5 dataset in contiguous blocks, never whole."""

    def __init__(self, ds: h5py.Dataset, device: torch.device, batch_size: int):
        self.ds, self.device = ds, device
        self.n_features = ds.shape[1]
        self.block = max(batch_size * 32, 4096)  # rows per read: large, sequential reads
        self.reader = StreamedRows(ds, chunk=self.block)

    def _read(self, start: int, stop: int) -> np.ndarray:
        x = self.reader.read(start, stop)
        if not np.isfinite(x).all():
            bad = start + int(np.flatnonzero(~np.isfinite(x).all(1))[0])
            raise ValueError(f"Input X contains NaN or infinity (row {bad} of {self.ds.name}).")
        return x

    def take(self, idx: np.ndarray) -> torch.Tensor:
        out = np.empty((len(idx), self.ds.shape[1]), np.float32)
        for s in range(0, self.ds.shape[0], self.block):
            sel = (idx >= s) & (idx < s + self.block)
            if sel.any():
                out[sel] = self._read(s, s + self.block)[idx[sel] - s]
        return torch.from_numpy(out).to(self.device)

    def standardization(self, train: np.ndarray, standardize: bool, sample_weight=None):
        d = self.ds.shape[1]
        if not standardize:
            return torch.zeros(d, device=self.device), torch.ones(d, device=self.device)
        mask = np.zeros(self.ds.shape[0], bool)
        mask[train] = True
        mean, scale = blockwise_mean_scale(
            (self._read(s, s + self.block)[mask[s:s + self.block]]
             for s in range(0, self.ds.shape[0], self.block)),
            None if sample_weight is None else sample_weight[mask])
        return (torch.from_numpy(mean).float().to(self.device),
                torch.from_numpy(scale).float().to(self.device))

    def epoch(self, train: np.ndarray, batch_size: int, gen: torch.Generator):
        mask = np.zeros(self.ds.shape[0], bool)
        mask[train] = True
        starts = np.arange(0, self.ds.shape[0], self.block)
        for b in torch.randperm(len(starts), generator=gen).numpy():
            s = int(starts[b])
            rows = np.flatnonzero(mask[s:s + self.block])
            if not len(rows):
                continue
            x = torch.from_numpy(self._read(s, s + self.block)[rows]).to(self.device)
            order = torch.randperm(len(rows), generator=gen)
            for i in range(0, len(rows), batch_size):
                sel = order[i:i + batch_size]
                yield x[sel.to(self.device)], torch.as_tensor(s + rows[sel.numpy()],
                                                              device=self.device)


def _keep_mask(x: torch.Tensor, p: float) -> torch.Tensor | None:
    """Dropout's mask for ``x``: ``1 / q`` where a unit is kept (probability ``q = 1 - p``,
    to 1/65,536), else 0; None when ``q`` rounds to 0. Drawn as 16-bit integers, four to a
    64-bit random number from the global generator: torch's CPU Bernoulli and uniform
    kernels cost 3x and 2x as much (docs/design.md)."""
    kept = round((1 - p) * 65536)  # draws >= 32768 - kept: kept of the 65,536 int16 values
    if kept < 1:
        return None
    n = x.numel()
    bits = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + 3) // 4,),
                         dtype=torch.int64).view(torch.int16)[:n]
    return (bits >= 32768 - kept).view(x.shape).to(x.dtype).mul_(65536 / kept)


def _forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net(x)``; training on the CPU, each dropout multiplies by :func:`_keep_mask`: the
    same dropout as ``nn.Dropout``'s at a third of its CPU kernel's cost (which was a third
    of an MLP epoch on 4,096 features, measured). The network keeps its ``nn.Dropout``
    modules: evaluation, export and CUDA run them as they are."""
    if not net.training or x.device.type != "cpu" or not isinstance(net, nn.Sequential):
        return net(x)
    for layer in net:
        mask = (_keep_mask(x, layer.p) if isinstance(layer, nn.Dropout) and layer.p > 0
                else None)
        x = x * mask if mask is not None else layer(x)
    return x


class MLPHead(ProbaMixin, ClassifierMixin, BaseEstimator):
    """A multi-layer perceptron head, trained with AdamW and early stopping.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(512,)
        Width of each hidden layer.
    activation : {"relu", "gelu", "tanh"}, default="relu"
    dropout : float, default=0.0
        Dropout after each hidden activation, while training.
    weight_decay : float, default=1e-4
        AdamW's decoupled weight decay.
    learning_rate : float, default=1e-3
    batch_size : int, default=256
    max_iter : int, default=100
        Maximum number of epochs.
    min_epoch_rows : int, default=1024
        An epoch visits at least this many training rows: a smaller training set is visited
        several times an epoch (each time shuffled), so a few dozen images get enough steps
        between two checks of the early-stopping loss (without it 90 rows are one step an
        epoch, and the patience runs out after a handful of steps).
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in the cross-entropy, with scikit-learn's meanings (see
        :class:`LogisticHead`).
    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of the training rows (stratified), stop when their loss
        has not improved by ``tol`` for ``n_iter_no_change`` epochs, and restore the best
        weights. Without it, the training loss is watched the same way.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=5
    tol : float, default=1e-4
    sample_groups : bool, default=False
        With ``groups`` (the image each row is a view of; a :class:`~featurebank.rows.ViewRows`
        gives its own), each epoch visits one row of each training group, drawn at random:
        the views serve as augmentation, and an epoch costs what the groups' centre rows
        alone would. Without it every row is visited every epoch.
    standardize : bool, default=True
        Standardise features inside the model (folded into the first layer).
    n_components : int, optional
        Train on the standardised features projected onto their top ``n_components``
        principal directions (a randomised sketch of at most 4,096 rows; directions whose
        variance is under 1e-6 of the largest are left out), a first layer
        ``n_features / n_components`` times cheaper. The projection is folded into the first
        layer afterwards: ``coefs_[0]`` still takes raw features.
    random_state : int, RandomState or None, default=None
    device : {"auto", "cpu", "cuda"}, default="auto"

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coefs_ : list of ndarray
        Weight matrices ``(n_in, n_out)`` per layer, the first in raw-feature space.
    intercepts_ : list of ndarray
    mean_, scale_ : ndarray of shape (n_features,)
        The standardisation of the training rows (zeros and ones when ``standardize=False``),
        already folded into ``coefs_[0]``.
    components_ : ndarray of shape (n_features, n_components)
        With ``n_components``: the principal directions the network was trained on, folded
        into ``coefs_[0]`` too.
    projected_coef_ : ndarray of shape (n_components, n_out)
        With ``n_components``: the first layer on the projected features, as trained
        (``coefs_[0] == (components_ / scale_[:, None]) @ projected_coef_``);
        ``decision_function`` goes through it, ``(n_features + n_out) n_components``
        products a row instead of ``n_features n_out``.
    n_features_in_ : int
    n_iter_ : int
        Epochs run.
    best_loss_ : float
        Best validation loss (training loss without early stopping).
    loss_curve_, validation_loss_curve_ : list of float
    """

    def __init__(self, hidden_layer_sizes=(512,), *, activation: str = "relu",
                 dropout: float = 0.0, weight_decay: float = 1e-4, learning_rate: float = 1e-3,
                 batch_size: int = 256, max_iter: int = 100, min_epoch_rows: int = 1024,
                 class_weight=None, early_stopping: bool = True,
                 validation_fraction: float = 0.1, n_iter_no_change: int = 5, tol: float = 1e-4,
                 sample_groups: bool = False, standardize: bool = True,
                 n_components: int | None = None, random_state=None, device: str = "auto"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.min_epoch_rows = min_epoch_rows
        self.class_weight = class_weight
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.sample_groups = sample_groups
        self.standardize = standardize
        self.n_components = n_components
        self.random_state = random_state
        self.device = device

    def _check_params(self) -> tuple[int, ...]:
        sizes = self.hidden_layer_sizes
        sizes = (sizes,) if isinstance(sizes, (int, np.integer)) else tuple(sizes)
        if not all(isinstance(h, (int, np.integer)) and h > 0 for h in sizes):
            raise ParameterError(f"the 'hidden_layer_sizes' parameter must be a tuple of "
                                 f"positive ints, got {self.hidden_layer_sizes!r}.")
        check_choice("activation", self.activation, sorted(_ACTIVATIONS))
        for name in ("dropout", "validation_fraction"):
            _UNIT.check(name, getattr(self, name))
        for name in ("batch_size", "max_iter", "n_iter_no_change", "min_epoch_rows"):
            POSITIVE_INT.check(name, getattr(self, name))
        for name in ("weight_decay", "tol", "learning_rate"):
            NON_NEGATIVE_FLOAT.check(name, getattr(self, name))
        Interval(int, 1, None, none_ok=True).check("n_components", self.n_components)
        if not isinstance(self.sample_groups, (bool, np.bool_)):
            raise ParameterError(f"the 'sample_groups' parameter must be True or False, got "
                                 f"{self.sample_groups!r}.")
        return tuple(int(h) for h in sizes)

    def _network(self, d: int, sizes: tuple[int, ...], k: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for h in sizes:
            layers += [nn.Linear(d, h), _ACTIVATIONS[self.activation][0]()]
            if self.dropout:
                layers.append(nn.Dropout(self.dropout))
            d = h
        layers.append(nn.Linear(d, k))
        return nn.Sequential(*layers)

    def fit(self, X, y, sample_weight=None, groups=None) -> MLPHead:
        """Fit on features ``X`` (n_samples, n_features) and labels ``y``.

        ``X`` may also be an HDF5 dataset, e.g. ``bank.features("train", "fc7")``: it is then
        streamed in blocks of rows and never loaded whole (banks larger than memory). Each
        epoch visits the blocks in a random order and shuffles the rows within each block.

        ``sample_weight`` (n_samples,) weighs each row's cross-entropy (times its class
        weight), in training and in the early-stopping loss, and its part in the
        standardisation and the principal directions. Each mini-batch's loss is
        ``sum_b w_i CE_i / (|b| mean_train(w))``: an unbiased estimate of the weighted mean.

        ``groups`` (n_samples,): rows of one group (an image's augmented views) stay on one
        side of the early-stopping holdout, and with ``sample_groups`` each epoch visits one
        of them.
        """
        return self._fit(X, y, sample_weight=sample_weight, groups=groups)

    def _fit(self, X, y, projection=None, sample_weight=None, groups=None,
             projected=None) -> MLPHead:
        """``fit``, optionally with the ``(mean, scale, components)`` of :meth:`_projection`
        computed already (a grid shares one; computed without ``sample_weight``) and ``X``'s
        rows projected with it (``_project``: the grid shares them too), and the ``groups`` of
        the rows (an image's views): the early-stopping holdout keeps each group on one
        side."""
        sizes = self._check_params()
        dev = resolve_device(self.device)
        sw = check_sample_weight(sample_weight, len(X)) if hasattr(X, "__len__") else None
        groups = getattr(X, "groups", None) if groups is None else np.asarray(groups)
        if groups is not None and len(groups) != X.shape[0]:
            raise ValueError(f"groups has {len(groups)} entries for {X.shape[0]} rows of X.")
        rows, y, projection = self._rows(X, y, dev, projection, sw, projected)
        classes, y_idx = check_classes(y, type(self).__name__)
        sw, loss_w = row_weights(sw, self.class_weight, classes, y_idx)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        train, val = self._holdout(y_idx, len(classes), seed, groups)
        k = 1 if len(classes) == 2 else len(classes)
        yt = torch.as_tensor(y_idx).to(dev)
        wt = (None if loss_w is None  # scaled to mean 1 over the training rows
              else torch.as_tensor(loss_w / max(loss_w[train].mean(), 1e-300)).float().to(dev))
        mean, scale = rows.standardization(train, self.standardize, sw)
        devices = [dev] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # seeded init and dropout, no global leak
            torch.manual_seed(seed)
            net = self._network(rows.n_features, sizes, k).to(dev)
            self._train(net, rows, (yt, wt), train, val, mean, scale, k, seed, groups)
        self._export(net, mean, scale)
        if projection is not None:
            self._unproject(*projection)
        self.classes_ = classes
        return self

    def _rows(self, X, y, dev: torch.device, projection, sample_weight=None, projected=None):
        """The training rows as the network sees them: streamed from HDF5, in memory, or
        projected onto principal directions (in memory: they are small); and the projection
        ``(mean, scale, components)``, or None."""
        if is_streamed(X):
            if len(X.shape) != 2:
                raise ValueError(f"X must be a 2-D dataset, got shape {X.shape}.")
            if isinstance(X, StreamedRows) and self.n_components is None:
                raise ParameterError("a selection of a dataset's rows (StreamedRows) is fitted "
                                     "through its projection: set n_components.")
            y = column_or_1d(y, warn=True)
            if len(y) != X.shape[0]:
                raise ValueError(f"X has {X.shape[0]} rows but y has {len(y)} labels.")
            self.n_features_in_ = X.shape[1]
            if self.n_components is None:
                return _StreamedRows(X, dev, self.batch_size), y, None
        else:
            X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
            if self.n_components is None:
                return _MemoryRows(X, dev), y, None
        projection = projection or self._projection(X, sample_weight=sample_weight)
        if projected is None:
            projected = _project(X, *projection)
        return _MemoryRows(projected, dev), y, projection

    def _projection(self, X, standardization_=None, sample_weight=None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mean, scale, components)``: the standardisation of ``X`` (given, or computed;
        weighted by ``sample_weight``) and its top ``n_components`` principal directions."""
        blocks = (chunk for _, chunk in chunks(X))
        if not self.standardize:
            mean, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
        else:
            mean, scale = standardization_ or blockwise_mean_scale(blocks, sample_weight)
        rank = min(self.n_components, X.shape[1])
        rng = check_random_state(self.random_state)
        sw = sample_weight
        if not isinstance(X, np.ndarray):  # on disk: read the sketch's sample rows only
            picked = (np.arange(X.shape[0]) if X.shape[0] <= 4096  # all: as in memory
                      else np.sort(rng.choice(X.shape[0], 4096, replace=False)))
            X = X.take(picked) if isinstance(X, StreamedRows) else as_float32(X[picked])
            sw = None if sw is None else sw[picked]
        V, ev, _ = principal_directions(X, mean, scale, rank, rng, sample_weight=sw)
        # directions the sample cannot tell from noise (fewer rows than components, dead
        # features) would be standardised up to unit variance: drop them
        keep = max(1, int((ev[:V.shape[1]] > 1e-6 * ev[0]).sum()))
        return mean, scale, V[:, :keep]

    def _unproject(self, mean: np.ndarray, scale: np.ndarray, V: np.ndarray) -> None:
        """Fold ``p = ((x - mean) / scale) @ V`` into the first layer: raw ``x`` in."""
        W = (V / scale[:, None]) @ self.coefs_[0]
        self.intercepts_[0] = self.intercepts_[0] - ((mean / scale) @ V) @ self.coefs_[0]
        self.projected_coef_ = self.coefs_[0]
        self.coefs_[0], self.components_ = W, V
        self.mean_, self.scale_ = mean, scale

    def _holdout(self, y_idx: np.ndarray, n_classes: int, seed: int, groups=None):
        """Training and early-stopping rows: a stratified, seeded split of the rows, or of
        their ``groups`` (each group's rows on one side) when given."""
        if groups is None:
            group_of, labels = np.arange(len(y_idx)), y_idx
        else:
            _, first, group_of = np.unique(np.asarray(groups), return_index=True,
                                           return_inverse=True)
            labels = y_idx[first]
        n = len(labels)
        idx = np.arange(n)
        n_val = int(round(self.validation_fraction * n))
        if not self.early_stopping or n_val < 1 or n - n_val < 1:
            return np.arange(len(y_idx)), None
        counts = np.bincount(labels)
        stratify = labels if counts.min() >= 2 and n_classes <= n_val <= n - n_classes else None
        _, val = train_test_split(idx, test_size=n_val, random_state=seed, stratify=stratify)
        held = np.isin(group_of, val)
        return np.flatnonzero(~held), np.flatnonzero(held)

    @staticmethod
    def _loss(net, x, y, mean, scale, k, w=None) -> torch.Tensor:
        """Mean cross-entropy of the batch, each row's times ``w`` when given."""
        logits = _forward(net, (x - mean) / scale)
        reduction = "mean" if w is None else "none"
        if k == 1:
            rows = nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y.float(),
                                                                 reduction=reduction)
        else:
            rows = nn.functional.cross_entropy(logits, y, reduction=reduction)
        return rows if w is None else (rows * w).mean()

    @torch.no_grad()
    def _eval_loss(self, net, x, y, w, mean, scale, k) -> float:
        """The (weighted) mean loss of held-out rows."""
        net.eval()
        total = 0.0
        for s in range(0, len(y), 8192):
            part = None if w is None else w[s:s + 8192]
            total += float(self._loss(net, x[s:s + 8192], y[s:s + 8192], mean, scale, k,
                                      part)) * len(y[s:s + 8192])
        net.train()
        return total / (len(y) if w is None else max(float(w.sum()), 1e-300))

    def _epoch_rows(self, train: np.ndarray, groups, gen: torch.Generator) -> np.ndarray:
        """The training rows an epoch visits: all, or (``sample_groups``) one of each group,
        drawn with ``gen``."""
        if groups is None or not self.sample_groups:
            return train
        order = train[torch.randperm(len(train), generator=gen).numpy()]
        _, first = np.unique(groups[order], return_index=True)  # each group's first drawn
        return np.sort(order[first])

    def _epoch(self, net, opt, rows, targets, train, groups, gen, model) -> float:
        """One epoch: passes over the training rows (shuffled; one view of each group with
        ``sample_groups``) until ``min_epoch_rows`` are seen; their mean training loss."""
        (yt, wt), (mean, scale, k) = targets, model
        total = torch.zeros((), device=yt.device)  # summed on the device: no sync per step
        seen = 0
        while not seen or seen < self.min_epoch_rows:
            visit = self._epoch_rows(train, groups, gen)
            for x, idx in rows.epoch(visit, self.batch_size, gen):
                loss = self._loss(net, x, yt[idx], mean, scale, k,
                                  None if wt is None else wt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach() * len(idx)
            seen += len(visit)
        return float(total) / seen

    def _train(self, net, rows, targets, train, val, mean, scale, k, seed, groups=None) -> None:
        yt, wt = targets
        opt = torch.optim.AdamW(net.parameters(), lr=self.learning_rate,
                                weight_decay=self.weight_decay)
        gen = torch.Generator().manual_seed(seed)
        if val is not None:
            at = torch.as_tensor(val, device=yt.device)
            x_val, y_val, w_val = rows.take(val), yt[at], None if wt is None else wt[at]
        best, best_state, stale = np.inf, None, 0
        self.loss_curve_, self.validation_loss_curve_ = [], []
        net.train()
        epoch = 0
        for epoch in range(1, self.max_iter + 1):
            self.loss_curve_.append(self._epoch(net, opt, rows, targets, train, groups, gen,
                                                (mean, scale, k)))
            if val is not None:
                watched = self._eval_loss(net, x_val, y_val, w_val, mean, scale, k)
                self.validation_loss_curve_.append(watched)
            else:
                watched = self.loss_curve_[-1]
            if watched < best - self.tol:
                best, stale = watched, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                stale += 1
                if stale >= self.n_iter_no_change:
                    break
        else:
            if stale < self.n_iter_no_change:
                warnings.warn(f"{type(self).__name__} stopped at max_iter={self.max_iter} epochs "
                              f"while its {'validation' if val is not None else 'training'} "
                              f"loss was still improving; increase max_iter.",
                              ConvergenceWarning, stacklevel=3)
        if best_state is not None and val is not None:
            net.load_state_dict(best_state)  # the epoch with the best validation loss
        self.n_iter_ = epoch
        self.best_loss_ = float(best)

    def _export(self, net, mean, scale) -> None:
        self.mean_ = mean.double().cpu().numpy()
        self.scale_ = scale.double().cpu().numpy()
        linears = [m for m in net if isinstance(m, nn.Linear)]
        self.coefs_ = [m.weight.detach().double().cpu().numpy().T for m in linears]
        self.intercepts_ = [m.bias.detach().double().cpu().numpy() for m in linears]
        # fold (x - mean) / scale into the first layer
        W, self.intercepts_[0] = fold_standardization(
            self.coefs_[0].T, self.intercepts_[0], self.mean_, self.scale_)
        self.coefs_[0] = W.T

    def decision_function(self, X) -> np.ndarray:
        """Logits, shape (n_samples, n_classes), or (n_samples,) for two classes."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        act = _ACTIVATIONS[self.activation][1]
        a = np.asarray(X, dtype=np.float64)
        for i, (W, b) in enumerate(zip(self.coefs_, self.intercepts_)):
            if i == 0 and hasattr(self, "projected_coef_"):  # the same map, factored
                a = (a @ (self.components_ / self.scale_[:, None])) @ self.projected_coef_ + b
            else:
                a = a @ W + b
            if i < len(self.coefs_) - 1:
                a = act(a)
        return a[:, 0] if a.shape[1] == 1 else a

    def predict(self, X) -> np.ndarray:
        """Predicted class labels."""
        scores = self.decision_function(X)
        idx = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(1)
        return self.classes_[idx]

    def to_torch(self) -> nn.Module:
        """An ``nn.Sequential`` from raw tap features to logits (standardisation folded in)."""
        check_is_fitted(self)
        layers: list[nn.Module] = []
        last = len(self.coefs_) - 1
        for i, (W, b) in enumerate(zip(self.coefs_, self.intercepts_)):
            layers.append(affine_to_torch(W.T, b, two_class_logits=i == last))
            if i < last:
                layers.append(_ACTIVATIONS[self.activation][0]())
        return nn.Sequential(*layers)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.non_deterministic = False
        return tags
