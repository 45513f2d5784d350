r"""Isometric building blocks: GroupSort, the orthogonal *constraint*, and its acting cache.

Contains:
    GroupSort: sort features in groups of ``g`` along the feature/channel axis (``g = 2`` is MaxMin).
    CReLU: concatenated ReLU ``[ReLU(x), ReLU(−x)]``, an activation that cannot die as a whole
        (doubles the next layer's fan-in; a plasticity baseline, docs/methods.md §2).
    ORTHOGONAL_MAPS: the valid names of the map from unconstrained to orthogonal matrices.
    orthogonal_: constrain a Linear or Conv weight to stay orthogonal (a torch parametrization).
    retract_: put the unconstrained tensors of ``"qr"`` layers back on the manifold (weights unchanged).
    acting_cache: reuse constrained weights across gradient-free forwards until they change.
    clear_acting_cache: drop the reused weights (after writes through ``.data``).

Together, orthogonal weights and GroupSort activations give "almost-everywhere isometric yet
universal Lipschitz approximators" (Anil, Lucas, Grosse, *Sorting out Lipschitz function
approximation*, arXiv 1811.05381; docs/methods.md §1.3). The networks built from them live in
``plasticrl.agents.isometric``.

Names kept apart (STYLE.md R8): orthogonal *initialisation* is ``plasticrl.agents.networks.orthogonal_init_``
(an initial value that training leaves at once); :func:`orthogonal_` here is the orthogonal
*constraint* (the weight stays orthogonal after every optimizer step).

Note [Optimizer contract of constrained layers]
    After ``orthogonal_(layer)`` the trainable tensor is ``layer.parametrizations.weight.original``
    (always 2-D: ``(out, in)`` for Linear, ``(C_out, C_in·kh·kw)`` for Conv), and ``layer.weight``
    is recomputed from it. :func:`plasticrl.plasticity.optimizers.param_groups` tags that tensor
    ``kind="constrained", isometry=False``: AdamO gives it a plain Adam step and *no* isometry
    step, and the isometry/spectral penalties skip it. The layer is isometric by construction, and
    pushing the unconstrained ``original`` towards orthogonality would be meaningless. The
    constrained weight itself is never a leaf and never sees an optimizer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize

__all__ = [
    "GroupSort",
    "CReLU",
    "ORTHOGONAL_MAPS",
    "orthogonal_",
    "retract_",
    "acting_cache",
    "clear_acting_cache",
]


class GroupSort(nn.Module):
    r"""Sort features in consecutive groups of ``group_size`` (Anil et al. 2019).

    For ``x`` with ``n`` features along ``dim``, split the features into the groups
    :math:`G_j = \{jg, \dots, jg + g - 1\}` and sort each group in ascending order:

    .. math::
        y_{G_j} = \operatorname{sort}(x_{G_j}), \qquad j = 0, \dots, n/g - 1.

    The output is a permutation of the input, chosen by the input: the Jacobian
    :math:`\partial y / \partial x = P(x)` is a permutation matrix (constant between ties), so
    GroupSort preserves norms, :math:`\|y\| = \|x\|`, and gradient norms. ``group_size=2`` is
    MaxMin, ``[min(x_0, x_1), max(x_0, x_1), ...]``; ``group_size=n`` is FullSort.

    Which axis: ``dim=1`` (default) is the feature axis of ``(B, F)`` activations *and* the channel
    axis of ``(B, C, H, W)`` feature maps, so for a conv layer each pixel's channels are sorted in
    groups and pixels never mix. Pass ``dim=-1`` for ``(B, T, F)`` sequences.

    Args:
        group_size: g >= 2, the size of each sorted group.
        dim: the axis to split into groups; its size must be divisible by ``group_size``.

    Raises:
        ValueError: ``group_size < 2`` at construction; in ``forward``, the size of ``dim`` is not
            divisible by ``group_size`` (the message names both).

    Example:
        >>> x = torch.tensor([[3.0, 1.0, -2.0, 5.0]])
        >>> GroupSort(2)(x)
        tensor([[ 1.,  3., -2.,  5.]])
        >>> GroupSort(4)(x)
        tensor([[-2.,  1.,  3.,  5.]])
    """

    def __init__(self, group_size: int = 2, dim: int = 1) -> None:
        super().__init__()
        if not isinstance(group_size, int) or group_size < 2:
            raise ValueError(f"GroupSort group_size must be an int >= 2, got {group_size!r}")
        self.group_size = group_size
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        """Sort every group of ``group_size`` consecutive entries of axis ``dim``."""
        if not -x.dim() <= self.dim < x.dim():
            raise ValueError(f"GroupSort(dim={self.dim}) got an input of shape {tuple(x.shape)}")
        d = self.dim % x.dim()
        n, g = x.shape[d], self.group_size
        if n % g:
            raise ValueError(
                f"GroupSort(group_size={g}) needs the size of dim {self.dim} to be divisible by {g}, "
                f"got {n} (input shape {tuple(x.shape)})"
            )
        groups = x.unflatten(d, (n // g, g))
        if g == 2:
            # Note [MaxMin without max/min]
            #   torch.maximum/minimum split the gradient 0.5/0.5 at ties, which makes the Jacobian
            #   stop being a permutation exactly where binary inputs (MinAtar) produce ties. A
            #   comparison mask routes each gradient entry to exactly one input, like sort does,
            #   and is cheaper than sort for pairs.
            a, b = groups.unbind(d + 1)
            swap = a > b
            out = torch.stack((torch.where(swap, b, a), torch.where(swap, a, b)), dim=d + 1)
        else:
            out = groups.sort(dim=d + 1).values
        return out.flatten(d, d + 1)

    def extra_repr(self) -> str:
        """``group_size=.., dim=..`` in the module's repr."""
        return f"group_size={self.group_size}, dim={self.dim}"


class CReLU(nn.Module):
    r"""Concatenated ReLU: ``[ReLU(x), ReLU(−x)]`` along ``dim`` (Shang et al. 2016; Abbas et al. 2023).

    .. math::
        \operatorname{CReLU}(x) = \big[\max(x, 0),\; \max(-x, 0)\big] \in \mathbb{R}^{2n}
        \quad\text{for}\quad x \in \mathbb{R}^n.

    Output ``i < n`` is ``relu(x_i)``, output ``n + i`` is ``relu(−x_i)``. For every nonzero
    ``x_i`` exactly one of the pair is positive, so the layer's output is never all zero on a
    nonzero input and every pre-activation unit passes a gradient (of ±1) wherever it is
    nonzero: a CReLU layer cannot die as a whole, which is why Abbas et al. (*Loss of Plasticity
    in Continual Deep Reinforcement Learning*, arXiv 2303.07507) use it against plasticity loss.
    Its individual outputs can still be dormant (``relu(−x_i)`` when ``x_i`` stays positive);
    the plasticity metrics count the ``2n`` outputs as the layer's units.

    The output has twice the input's size along ``dim``, so the *next* layer's fan-in doubles
    (:attr:`expansion`; ``plasticrl.agents.networks`` sizes its layers with it). ``dim=1`` is the feature
    axis of ``(B, F)`` and the channel axis of ``(B, C, H, W)``: a conv's ``C`` channels become
    ``2C``.

    Not elementwise (it changes the shape), so the layer-Jacobian metric takes the exact
    ``torch.func`` path for it (``plasticrl.plasticity.metrics``), not the closed form ``diag(φ'(z)) W``.

    Args:
        dim: the axis to concatenate along.

    Example:
        >>> CReLU()(torch.tensor([[1.5, -2.0, 3.0]]))
        tensor([[1.5000, 0.0000, 3.0000, 0.0000, 2.0000, 0.0000]])
        >>> CReLU().expansion
        2
    """

    expansion: int = 2
    """Output size along ``dim`` over input size."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        """``relu(cat([x, −x], dim))``."""
        return torch.relu(torch.cat((x, x.neg()), dim=self.dim))

    def extra_repr(self) -> str:
        """``dim=..`` in the module's repr."""
        return f"dim={self.dim}"


ORTHOGONAL_MAPS: tuple[str, ...] = ("qr", "matrix_exp", "cayley", "householder")
"""Valid ``map`` names of :func:`orthogonal_`: ``"qr"`` (ours, default) and torch's three maps."""


class _QR(nn.Module):
    r"""The QR map: an unconstrained ``X`` ↦ the Q factor of ``X`` whose R has a positive diagonal.

    For tall ``X`` (m ≥ n), :math:`X = QR` with :math:`Q^\top Q = I_n`; a wide ``X`` is mapped
    through its transpose. Differentiable wherever ``X`` has full rank (``torch.linalg.qr``
    autograd). ``right_inverse`` returns the orthogonalised weight, so the trained tensor starts on
    the manifold, where the map's Jacobian is best conditioned. See Note [Default map].
    """

    def forward(self, x: Tensor) -> Tensor:
        """Q factor with a positive-diagonal R (a zero diagonal entry counts as positive)."""
        tall = x.shape[-2] >= x.shape[-1]
        q, r = torch.linalg.qr(x if tall else x.mT)
        signs = torch.where(r.diagonal(dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(q.dtype)
        q = q * signs.unsqueeze(-2)
        return q if tall else q.mT

    @torch.no_grad()
    def right_inverse(self, weight: Tensor) -> Tensor:
        """An unconstrained tensor mapping to the orthogonalised ``weight``: that matrix itself."""
        return self.forward(weight).contiguous()


# Note [Default map]
#   torch's maps are slow to differentiate on the thin matrices that dense layers after a conv
#   have. Measured on this project's 2-core CPU (torch 2.13, 1 thread, min of repeats; forward +
#   backward of the constrained weight alone, ``benchmarks/bench_isometric.py --maps``):
#       (128, 1024):  qr 3.4 ms | householder 224 ms | cayley 167 ms | matrix_exp 2784 ms
#       (128, 128):   qr 0.69 ms | householder 6.4 ms | cayley 1.1 ms | matrix_exp 6.0 ms
#       (16, 36):     qr 0.18 ms | householder 0.80 ms | cayley 0.34 ms | matrix_exp 0.66 ms
#   The (128, 1024) layer is the dense layer of the MinAtar network: householder (torch's default
#   for non-square) makes a batch-32 update cost 227 ms against 5.2 ms with qr. So the default
#   is our QR map — the QR retraction, no trivialization, no extra buffer — and torch's maps
#   stay selectable by name.
#
#   The price: Q(cX) = Q(X) for c > 0, so the loss is scale-invariant in X, its gradient is
#   orthogonal to X, and every optimizer step lengthens X (‖X + Δ‖² ≈ ‖X‖² + ‖Δ‖²). The step's
#   effect on the weight shrinks like 1/‖X‖: an effective learning rate that decays with training
#   — a confound in a plasticity study. Measured (128×128 layer, AdamO lr 1e-3, 3000 updates):
#   ‖X‖ grows 8 % (householder: 2 %), linearly in ‖X‖², i.e. ~7× after 10⁶ updates. Remedy:
#   :func:`retract_` every N updates resets X to Q(X) without changing the weight. Weight decay
#   on ``kind="constrained"`` tensors acts the other way (it shrinks X, raising the effective lr);
#   leave it at 0 for them. Every map assumes X keeps full rank.


def _torch_orthogonal_map(matrix: Tensor, orthogonal_map: str) -> nn.Module:
    # Note [Reusing torch's orthogonal map]
    #   torch.nn.utils.parametrizations.orthogonal is the map for matrix_exp / cayley /
    #   householder (with dynamic trivialization), but it reads a ≥3-d tensor as a *batch* of
    #   matrices (a conv kernel would become C_out·C_in separate kh×kw matrices), and its module
    #   class is private. We register it, through the public function, on a throwaway holder
    #   whose only tensor is the 2-D matrix we mean, and take the module out of the documented
    #   ``holder.parametrizations.weight[0]`` slot. No private torch name is imported.
    holder = nn.Module()
    holder.register_parameter("weight", nn.Parameter(matrix.detach().clone()))
    parametrizations.orthogonal(holder, "weight", orthogonal_map=orthogonal_map)
    return holder.parametrizations.weight[0]


class _OrthogonalMatrix(nn.Module):
    """Parametrization: unconstrained ``(rows, cols)`` → orthogonal matrix → weight shape.

    ``orth`` is the orthogonal map on the 2-D matrix (:class:`_QR` or torch's); ``shape`` is the
    weight's shape (the same for Linear, the 4-D kernel for Conv2d). Holds the acting memo (Note
    [Acting cache]).
    """

    def __init__(self, shape: torch.Size, orth: nn.Module) -> None:
        super().__init__()
        self.shape = shape
        self.orth = orth
        self._acting = 0  # depth of enclosing acting_cache() contexts
        self._memo: tuple[tuple[Tensor, ...], tuple[tuple[int, int], ...], Tensor] | None = None

    def _evaluate(self, original: Tensor) -> Tensor:
        return self.orth(original).reshape(self.shape)

    def forward(self, original: Tensor) -> Tensor:
        """The constrained weight; reused from the memo inside ``acting_cache`` when unchanged."""
        if not self._acting or torch.is_grad_enabled():
            return self._evaluate(original)
        # Note [Acting cache] — what the memo is keyed on.
        #   The weight is a function of ``original`` and, for torch's maps, of their ``base``
        #   buffer (dynamic trivialization) only. Optimizer steps and load_state_dict change
        #   them in place, which bumps ``_version``; ``.to()`` / ``.data =`` swap storage without
        #   bumping it, which changes ``data_ptr``; right_inverse replaces ``base`` with a new
        #   object. Holding the keyed tensors makes the identity test safe (an id cannot be
        #   reused while we hold it).
        tensors = (original, *self.orth.buffers())
        stamp = tuple((t._version, t.data_ptr()) for t in tensors)
        memo = self._memo
        if (
            memo is not None
            and len(memo[0]) == len(tensors)
            and all(a is b for a, b in zip(memo[0], tensors, strict=True))
            and memo[1] == stamp
        ):
            return memo[2]
        weight = self._evaluate(original)
        self._memo = (tensors, stamp, weight)
        return weight

    @torch.no_grad()
    def right_inverse(self, weight: Tensor) -> Tensor:
        """Unconstrained tensor whose image is the orthogonalised ``weight`` (QR if not orthogonal)."""
        if weight.shape != self.shape:
            raise ValueError(f"expected a weight of shape {tuple(self.shape)}, got {tuple(weight.shape)}")
        self._memo = None
        return self.orth.right_inverse(weight.reshape(self.shape[0], -1))

    def __getstate__(self) -> dict[str, Any]:
        # deepcopy (target networks) and pickling drop the memo: it may hold inference tensors
        # and it is keyed on the identity of this copy's tensors anyway.
        state = super().__getstate__()
        state["_memo"] = None
        state["_acting"] = 0
        return state

    def extra_repr(self) -> str:
        return f"shape={tuple(self.shape)}"


def orthogonal_(module: nn.Module, name: str = "weight", map: str | None = None) -> nn.Module:
    r"""Constrain ``module.<name>`` to stay orthogonal, in place (a parametrization).

    The weight is read as the matrix :math:`W \in \mathbb{R}^{m \times n}` with :math:`m` = the
    size of dim 0 (``out_features`` / ``C_out``) and :math:`n` = the product of the others
    (``in_features`` / ``C_in·kh·kw``), and kept on the Stiefel manifold:

    .. math::
        W^\top W = I_n \;\; (m \ge n,\ \text{tall: orthonormal columns}), \qquad
        W W^\top = I_m \;\; (m < n,\ \text{wide: orthonormal rows}).

    So every one of the :math:`\min(m, n)` singular values of :math:`W` is exactly 1. A Linear
    layer ``x ↦ Wx + b`` then has Jacobian ``W``: a tall one is an isometry onto its image
    (:math:`\|Wx\| = \|x\|`), a wide one an isometry on its row space (a coisometry).

    The map from the unconstrained tensor is ``"qr"`` by default (the Q factor of the tensor,
    Note [Default map]) or one of torch's (``matrix_exp``, ``cayley``, ``householder``, with
    dynamic trivialization; Note [Reusing torch's orthogonal map]). The initial value is the
    weight itself if it is already orthogonal, else the Q factor of its QR decomposition (with a
    positive-diagonal R); assigning ``module.weight = W`` later does the same (``right_inverse``).

    Convolutions: the kernel ``(C_out, C_in, kh, kw)`` is orthogonalised **as the flattened matrix
    (C_out, C_in·kh·kw)** — the cheap approximation of docs/methods.md §1.3. A stride-1 conv with such a
    kernel is **not** an exact isometry. Writing its Jacobian on an input ``x`` as the stack over
    output positions p of :math:`K P_p x` (:math:`P_p` extracts the patch at p),

    .. math::
        \|J x\|^2 = \sum_p \|K P_p x\|^2 \le \sum_p \|P_p x\|^2 \le kh\,kw\,\|x\|^2,

    so :math:`\sigma_{\max}(J) \le \sqrt{kh\,kw}`. With a tall flattened kernel
    (:math:`K^\top K = I`) the singular values are exactly :math:`\sqrt{c_i}`, :math:`c_i` = how
    many patches cover input entry i (1 at a corner, kh·kw inside), and with a wide one
    (:math:`K K^\top = I`, the MinAtar case) they spread between near 0 and :math:`\sqrt{kh\,kw}`.
    ``tests/plasticity/test_layers.py`` measures both. Exact orthogonal convolutions need BCOP,
    Cayley-in-Fourier or SOC, none of which is implemented here.

    Optimizer contract: see Note [Optimizer contract of constrained layers] — the trainable tensor
    is ``module.parametrizations.<name>.original`` (2-D), tagged ``kind="constrained"``.

    Performance: the map is recomputed on every access of ``module.weight``. Wrap gradient-free
    forwards (acting) in :func:`acting_cache` to compute it once per optimizer step instead.

    Args:
        module: a layer owning the floating-point tensor ``name`` with 2 or more dimensions whose
            dim 0 is the output dimension (``nn.Linear``, ``nn.Conv1d/2d/3d``; not
            ``ConvTranspose``, whose dim 0 is the input).
        name: the tensor to constrain.
        map: one of :data:`ORTHOGONAL_MAPS`; ``None`` means ``"qr"`` (Note [Default map]).

    Returns:
        ``module`` itself, now parametrized.

    Raises:
        ValueError: no such tensor, fewer than 2 dimensions, not floating point, already
            parametrized, a transposed convolution, or an unknown ``map`` (the message lists the
            valid ones).

    Example:
        >>> layer = orthogonal_(nn.Linear(3, 5))
        >>> W = layer.weight  # tall: orthonormal columns
        >>> torch.allclose(W.T @ W, torch.eye(3), atol=1e-5)
        True
        >>> tuple(layer.parametrizations.weight.original.shape)  # what the optimizer trains
        (5, 3)
        >>> conv = orthogonal_(nn.Conv2d(4, 16, 3))  # flattened kernel (16, 36): wide
        >>> K = conv.weight.flatten(1)
        >>> torch.allclose(K @ K.T, torch.eye(16), atol=1e-5)
        True
    """
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor):
        raise ValueError(f"{type(module).__name__} has no parameter or buffer named {name!r}")
    if parametrize.is_parametrized(module, name):
        raise ValueError(
            f"{type(module).__name__}.{name} is already parametrized; orthogonal_ constrains a plain tensor"
        )
    if weight.dim() < 2:
        raise ValueError(
            f"orthogonal_ needs a tensor with >= 2 dimensions, "
            f"{type(module).__name__}.{name} has shape {tuple(weight.shape)}"
        )
    if not weight.is_floating_point():
        raise ValueError(f"orthogonal_ needs a real floating-point tensor, got {weight.dtype}")
    if isinstance(module, nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d):
        raise ValueError(
            "orthogonal_ does not support transposed convolutions (their dim 0 is the input dimension)"
        )
    rows = weight.shape[0]
    cols = weight.numel() // rows if rows else 0
    map = "qr" if map is None else map
    if map not in ORTHOGONAL_MAPS:
        raise ValueError(f"unknown orthogonal map {map!r}; valid: {list(ORTHOGONAL_MAPS)}")
    matrix = weight.detach().reshape(rows, cols)
    orth = _QR() if map == "qr" else _torch_orthogonal_map(matrix, map)
    # unsafe=True: for a conv the unconstrained tensor (2-D) and the weight (4-D) differ in shape.
    parametrize.register_parametrization(module, name, _OrthogonalMatrix(weight.shape, orth), unsafe=True)
    return module


@torch.no_grad()
def retract_(model: nn.Module) -> int:
    r"""Reset the unconstrained tensor ``X`` of every ``"qr"``-constrained layer to ``Q(X)``, in place.

    The weights do not change (:math:`Q(Q(X)) = Q(X)`); only the length of ``X`` does, which
    restores the effective learning rate the scale-invariant QR map loses as training lengthens
    ``X`` (Note [Default map]). The tensors keep their identity, so the optimizer keeps them and
    their moments; with a call every few hundred updates the moments' scale changes by well under
    1 %. Layers under torch's maps are left alone (their trivialization has no such drift).

    Args:
        model: any module.

    Returns:
        The number of tensors reset.

    Example:
        >>> layer = orthogonal_(nn.Linear(4, 4))
        >>> x = layer.parametrizations.weight.original
        >>> with torch.no_grad():
        ...     _ = x.mul_(3.0)  # as if training had lengthened it
        >>> w = layer.weight.clone()
        >>> retract_(layer)
        1
        >>> torch.allclose(layer.weight, w, atol=1e-6), round(x.norm().item() ** 2, 3)
        (True, 4.0)
    """
    count = 0
    for module in model.modules():
        if not isinstance(module, parametrize.ParametrizationList):
            continue
        first = module[0]
        if isinstance(first, _OrthogonalMatrix) and isinstance(first.orth, _QR):
            module.original.copy_(first.orth(module.original))
            count += 1
    return count


@contextlib.contextmanager
def acting_cache(model: nn.Module) -> Iterator[None]:
    """Reuse each constrained weight across gradient-free forwards until the weight changes.

    Inside the context, with gradients disabled (``torch.no_grad()`` or ``torch.inference_mode()``),
    every :func:`orthogonal_` layer of ``model`` computes its weight once and returns the same
    tensor on later forwards — in this context *and in later ones* — until an optimizer step,
    ``load_state_dict``, ``.to()`` or an assignment changes its unconstrained tensors (Note
    [Acting cache]). With gradients enabled it computes the weight every time, as without the
    context, so a training forward always differentiates through the map.

    It never changes what a forward computes, nor whether it records gradients, and it is a no-op
    for a model without :func:`orthogonal_` layers: a trainer can wrap every acting forward in it
    without knowing the network. Other parametrizations (e.g. torch's own ``orthogonal``) are
    evaluated as usual.

    Note [Acting cache]
        torch's ``parametrize.cached()`` only caches within one ``with`` block and cannot tell
        whether the weights changed, and an acting forward reads each weight once, so it would
        save nothing per step. Weights change only at optimizer steps (one per ``train_freq``
        environment steps, or per PPO update), so the memo lives across contexts, in each layer's
        parametrization, keyed on the versions and storage of its unconstrained tensors. Cost:
        one extra copy of the constrained weights; ``deepcopy`` drops it. Blind spot, shared with
        autograd: an in-place write through ``.data`` (``p.data.mul_(...)``) bumps no version —
        code that edits constrained tensors that way must call :func:`clear_acting_cache`.
        Edits under ``torch.no_grad()`` (``p.mul_(...)``, ``p.copy_(...)``) are seen.

        Measured (``benchmarks/bench_isometric.py``, 1 thread, batch 1, isometric_minatar_cnn):
        1965 µs per acting forward without the cache, 146 µs with it, 51 µs for the plain
        ``minatar_cnn``. What remains is entering the context (~11 µs: one walk over the
        modules), the parametrization's property and memo check (~11 µs per constrained layer)
        and GroupSort (~15 µs per activation).

    Args:
        model: any module.

    Example:
        >>> net = nn.Sequential(orthogonal_(nn.Linear(4, 4)), GroupSort(2))
        >>> with torch.no_grad(), acting_cache(net):
        ...     q1 = net(torch.ones(1, 4))
        ...     q2 = net(torch.ones(1, 4))  # reuses the orthogonal weight
        >>> torch.equal(q1, q2)
        True
    """
    maps = [m for m in model.modules() if isinstance(m, _OrthogonalMatrix)]
    for m in maps:
        m._acting += 1
    try:
        yield
    finally:
        for m in maps:
            m._acting -= 1


def has_orthogonal_layers(model: nn.Module) -> bool:
    """Whether ``model`` has any :func:`orthogonal_` layer.

    Only then do :func:`acting_cache` and :func:`retract_` have work to do; agents check once
    instead of walking the modules on every step.
    """
    return any(isinstance(m, _OrthogonalMatrix) for m in model.modules())


def clear_acting_cache(model: nn.Module) -> None:
    """Forget every constrained weight :func:`acting_cache` kept for ``model``.

    Only needed after in-place writes through ``.data`` to a constrained layer's unconstrained
    tensors, which no version counter sees (Note [Acting cache]); everything else invalidates
    the cache by itself.
    """
    for m in model.modules():
        if isinstance(m, _OrthogonalMatrix):
            m._memo = None
