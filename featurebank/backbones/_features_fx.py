"""Plain-module backbones: the network traced with FX and cut after its taps (:class:`TapNetwork`),
and the one way back from a bank's spec to such a network (:func:`rebuild_tap_network`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..exceptions import BackboneError
from ..records import TapLayer, TapSelection
from ._builder import Preprocessing, adopt_state_dict, random_init, resolve, skeleton
from ._features import pool

if TYPE_CHECKING:
    from ..records import BankSpec

__all__ = ["TapNetwork", "rebuild_tap_network"]


def _truncate(model: nn.Module, name: str, layers: Mapping[str, TapLayer]) -> nn.Module:
    """The model traced with FX and cut after the nodes that give ``layers``: a GraphModule
    returning ``{tap: activation}``. An ``input`` tap (``penultimate``) is the value that flows
    into its module, which is then dropped."""
    import torch.fx

    from ._registry import family_of

    create = family_of(name).feature_extractor()
    try:
        gm = create(model, return_nodes={d.module: t for t, d in layers.items()})
    except Exception as e:  # FX cannot trace every model
        raise BackboneError(
            f"model {name!r} cannot be traced with torch.fx ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}), so it has no plain-module form for "
            f"fine-tuning and export.") from None
    output = next(n for n in gm.graph.nodes if n.op == "output")
    values = dict(output.args[0])
    for tap, d in layers.items():
        if d.where == "input":
            call = next(n for n in gm.graph.nodes
                        if n.op == "call_module" and n.target == d.module)
            values[tap] = call.args[0]
    output.args = (values,)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return torch.fx.GraphModule(gm, gm.graph)


class TapNetwork(nn.Module):
    """Normalised images -> the pooled features of a backbone's taps, as one plain module.

    The backbone is traced with its family's FX feature extraction (torchvision's, or timm's
    with its leaf modules) and truncated after the last tap, so nothing past it runs, and,
    unlike :class:`Backbone` (which stops its forward by raising from a hook),
    ``torch.export``, TorchScript and ONNX work on it. Several taps are concatenated in the
    order given.

    Parameters
    ----------
    model : nn.Module
        The classification network.
    name : str
        Its registry name.
    taps : list of str
    tap_layers : dict of str to TapLayer
        Where each tap reads and how it is pooled (a bank's ``spec.tap_layers``).
    preprocessing : Preprocessing
    """

    def __init__(self, model: nn.Module, *, name: str, taps: list[str],
                 tap_layers: Mapping[str, TapLayer], preprocessing: Preprocessing):
        super().__init__()
        self.model = _truncate(model, name, {t: tap_layers[t] for t in taps})
        self.taps = list(taps)
        self.pools = [tap_layers[t].pool for t in taps]
        self.preprocessing = preprocessing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        feats = [pool(out[t], kind) for t, kind in zip(self.taps, self.pools)]
        return feats[0] if len(feats) == 1 else torch.cat(feats, dim=1)

    def preprocess(self, images: torch.Tensor, image_size: int) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` -> normalised input (see :meth:`Preprocessing.apply`)."""
        return self.preprocessing.apply(images, image_size)


def rebuild_tap_network(spec: BankSpec, taps: TapSelection,
                        state_dict: Mapping[str, Any] | None = None) -> TapNetwork:
    """The backbone a bank's ``spec`` records, as a :class:`TapNetwork` up to ``taps``.

    Without ``state_dict``: the bank's own weights (pretrained, a seeded random init, or a
    weights file that must still hash to the recorded value). With it: the architecture on
    the meta device holding the ``state_dict`` of a saved network (its ``backbone.model.``
    entries, as a fine-tune writes them), no init, no download.
    """
    kw = {"name": spec.model, "taps": list(taps), "tap_layers": spec.tap_layers,
          "preprocessing": spec.preprocessing}
    if state_dict is None:
        model, *_ = resolve(spec.model, spec.weights.rebuild_argument(spec.weights_path))
        return TapNetwork(model.eval(), **kw)
    prefix = "backbone.model."
    own = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    net = TapNetwork(skeleton(spec.model), **kw)
    net.model = adopt_state_dict(
        net.model, own, lambda: TapNetwork(random_init(spec.model).eval(), **kw).model)
    return net
