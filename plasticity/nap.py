r"""NaP, Normalize-and-Project (Lyle et al. 2024, arXiv 2407.01800; docs/methods.md §2.1).

Contains:
    nap_norm: the normalisation NaP puts before every hidden nonlinearity (no learnable parameters).
    mark_projected_: record a layer's initial weight norm, making the layer one NaP projects.
    projected_modules: the layers of a model that NaP projects, in ``named_modules()`` order.
    NormProjection: ``W ← ‖W₀‖_F · W / ‖W‖_F`` for every marked layer; ``attach`` runs it after
        every step of an optimizer.
    attach_nap: attach the projection of a model to its optimizer, if the model has marked layers.

NaP has two halves, and both are needed for its guarantee: a normalisation without learnable scale
and shift before every hidden nonlinearity makes each hidden layer's output (almost) invariant to the
scale of its weights, and projecting every hidden weight back to its initial Frobenius norm after
every optimizer step then removes the one thing training could still change by growing weights: the
effective learning rate, which decays like ``lr/‖W‖²`` for a scale-invariant layer.

Note [Where NaP's state lives]
    The target norms ``‖W₀‖_F`` are a non-trainable buffer, :data:`NAP_BUFFER`, on each projected
    layer (``fc.nap_init_norm``), registered right after the network's initialisation. So they are
    in ``model.state_dict()``: a checkpoint carries them, a resumed run projects to exactly the saved
    norms (not to those of a re-initialisation), a target network copied from the online one carries
    them, ``model.to(device)`` moves them, and an optimizer-state reset (at a task switch) cannot lose
    them. :class:`NormProjection` itself holds no state: it looks the modules' weights and buffers up
    at every call.

Note [NaP and the optimizer]
    The projection runs as an optimizer step post-hook (``register_step_post_hook``), so it follows
    *every* ``optimizer.step()`` whatever the loop (PPO takes epochs × minibatches steps per update)
    and composes with any ``torch.optim.Optimizer``: Adam, SGD, RMSprop, AdamO (after AdamO's
    isometry step: the projection is the last word on the norm). It rescales weights in place under
    ``no_grad``; the optimizer's state is left as it is. Lyle et al. do not adjust Adam's moments
    after the projection either: the projection is a per-matrix scalar close to 1 per step, the
    moments estimate gradient statistics, not weights, and for a scale-invariant layer the gradient
    direction is unchanged by the rescaling. AdamO's isometry prefetch (``optimizer.iso_prefetch``)
    sees the in-place rescaling as a changed tensor and recomputes synchronously (correct, but the
    prefetch then saves nothing).

Note [What NaP projects]
    Hidden weight matrices only (Linear and Conv kernels, the whole kernel as one Frobenius norm); never
    the output layers (their scale sets the scale of Q-values, logits and V(s)) and never biases (a
    bias sets a unit's offset, not its scale; Lyle et al. project weights). The networks mark their
    own hidden layers (``network.nap``); :func:`mark_projected_` on any other Linear/Conv opts it in.

Example:
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(3, 4), nap_norm(4), nn.ReLU(), nn.Linear(4, 2))
    >>> _ = mark_projected_(net[0])
    >>> opt = torch.optim.SGD(net.parameters(), lr=1.0)
    >>> projection = attach_nap(net, opt)
    >>> before = net[0].weight.norm().item()
    >>> net(torch.randn(5, 3)).square().sum().backward()
    >>> opt.step()
    >>> abs(net[0].weight.norm().item() - before) < 1e-5
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

__all__ = [
    "NAP_BUFFER",
    "nap_norm",
    "mark_projected_",
    "projected_modules",
    "NormProjection",
    "attach_nap",
]

NAP_BUFFER = "nap_init_norm"
"""Name of the buffer holding a projected layer's initial ‖W₀‖_F (Note [Where NaP's state lives])."""

_PROJECTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MIN_NORM = 1e-12  # below this a weight is zero for the projection (scale finite, 0 stays 0)


def nap_norm(width: int, *, conv: bool = False) -> nn.Module:
    """NaP's normalisation of ``width`` features (or channels): no learnable scale or shift.

    Dense: ``LayerNorm(width, elementwise_affine=False)``, over the features of each sample.
    Conv: ``GroupNorm(1, width, affine=False)``, over all of (C, H, W) of each sample: the statistic
    of a LayerNorm over the flattened feature map, as ``network.layernorm`` normalises convs
    (Note [Architecture variants] in :mod:`plasticrl.agents.networks`), and independent of the
    input's spatial size.

    Example:
        >>> len(list(nap_norm(8).parameters())), len(list(nap_norm(8, conv=True).parameters()))
        (0, 0)
    """
    if conv:
        return nn.GroupNorm(1, width, affine=False)
    return nn.LayerNorm(width, elementwise_affine=False)


def mark_projected_(module: nn.Module) -> nn.Module:
    """Record ``module``'s current ‖W‖_F as its NaP target (call right after initialisation).

    Raises:
        ValueError: not a plain Linear/Conv (a parametrized weight is recomputed from another
            tensor and cannot be rescaled in place).
    """
    if not isinstance(module, _PROJECTABLE) or parametrize.is_parametrized(module):
        raise ValueError(f"NaP projects plain Linear/Conv weights, not a {type(module).__name__}")
    module.register_buffer(NAP_BUFFER, module.weight.detach().norm().clone())
    return module


def projected_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every layer :func:`mark_projected_` marked, in ``named_modules()`` order."""
    return [(name, m) for name, m in model.named_modules() if NAP_BUFFER in m._buffers]


class NormProjection:
    """NaP's projection of the marked layers of ``model``: ``W ← ‖W₀‖_F · W / ‖W‖_F``.

    Call it (or :meth:`project_`) to project now; :meth:`attach` projects after every step of an
    optimizer. Holds no state of its own (Note [Where NaP's state lives]).

    Attributes:
        names: the projected layers' module names.
    """

    def __init__(self, model: nn.Module) -> None:
        marked = projected_modules(model)
        self.names: tuple[str, ...] = tuple(name for name, _ in marked)
        self._modules: tuple[nn.Module, ...] = tuple(m for _, m in marked)

    @torch.no_grad()
    def project_(self) -> None:
        """Rescale every marked weight to its initial Frobenius norm, in place (biases untouched).

        A weight of norm 0 stays 0 (there is no direction to rescale: norms are clamped to
        1e-12 first, so the scale stays finite).
        """
        weights: list[Tensor] = [m.weight for m in self._modules]  # type: ignore[misc]
        if not weights:
            return
        targets: list[Tensor] = [getattr(m, NAP_BUFFER) for m in self._modules]
        norms = list(torch._foreach_norm(weights))
        torch._foreach_clamp_min_(norms, _MIN_NORM)
        torch._foreach_mul_(weights, torch._foreach_div(targets, norms))  # a few fused ops, no sync

    __call__ = project_

    def attach(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Project after every ``optimizer.step()`` (Note [NaP and the optimizer]).

        Returns:
            The hook's handle (``handle.remove()`` detaches it).
        """

        def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            self.project_()

        return optimizer.register_step_post_hook(hook)


def attach_nap(model: nn.Module, optimizer: torch.optim.Optimizer) -> NormProjection | None:
    """Attach NaP's projection of ``model`` to ``optimizer``; None (nothing attached) without marks."""
    projection = NormProjection(model)
    if not projection.names:
        return None
    projection.attach(optimizer)
    return projection
