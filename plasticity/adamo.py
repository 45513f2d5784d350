"""AdamO: Adam with a decoupled isometry step (Rosseau, Müller, Nowé, ICML 2026).

Contains:
    AdamO: the optimizer (``plasticity.AdamO``), a subclass of ``torch.optim.Adam`` with AdamW's
        decoupled weight decay plus one additive step, ``θ ← θ − η_iso·λ·∇R(θ_{t−1})``.
    The ``"adamo"`` factory in :data:`plasticrl.plasticity.optimizers.OPTIMIZERS`.

Paper: *Preserving Plasticity in Continual Learning via Dynamical Isometry*, arXiv 2606.09762.
The maths of the isometry term lives in :mod:`plasticrl.plasticity.isometry`; docs/methods.md §1
is the spec (§1.2 the update rule).

Note [Adam part]
    The Adam part of every step is torch's own: :meth:`torch.optim.Adam._init_group` and the
    functional ``torch.optim.adam.adam`` with ``decoupled_weight_decay=True`` (AdamW), so the
    single-tensor, ``foreach`` and ``fused`` kernels, the state keys and the ``state_dict`` format
    are torch's. AdamO adds two things around it, per param group: ∇R is evaluated at θ_{t−1}
    before the Adam update and added after it. Each tensor's Adam update reads only that tensor
    and its own state, so adding ∇R after the whole group's update gives the same bits as adding
    it right after each tensor's. The one choice that is not torch's is the default kernel:
    ``fused=None`` and ``foreach=None`` pick the fused kernel (one pass per tensor, ~4× faster
    than the loop on a small CPU network) when every parameter of the group is a floating-point
    CPU or CUDA tensor, else ``foreach`` off the CPU and the single-tensor loop on it. It is
    resolved at each step, so ``param_groups`` keep the flags as given (None stays None).

Note [Which tensors take the isometry step]
    Decided by the param-group key ``isometry`` set by :func:`plasticrl.plasticity.optimizers.param_groups`
    (Note [Parameter groups]), never by inspecting modules inside ``step``:
    ``True`` → every tensor of the group with two or more dimensions; ``False`` → none;
    absent (plain ``AdamO(model.parameters())``, stored as ``None``) → every tensor with two or more
    dimensions. A parameter whose ``grad`` is ``None`` is skipped entirely, as in Adam, so frozen or
    unused tensors are never moved by the isometry step either.

Note [Isometry prefetch]
    ∇R(θ_t) depends only on the weights, which are final as soon as step t−1 returns. With
    ``iso_prefetch=True`` the end of each ``step`` submits ∇R for the next step to a
    :class:`~plasticrl.plasticity.prefetch.TensorPrefetch` (one background thread; matmuls release
    the GIL), so it runs on an otherwise idle core while the trainer steps the env, acts and runs
    the forward/backward of the next update; the next ``step`` takes it (normally done already).
    The values are exactly the synchronous ones (Note [Prefetch validity] in that module: a weight
    edited in place, a changed ``iso_target`` or a failure recomputes synchronously); code that
    edits weights through ``p.data`` must call :meth:`AdamO.discard_prefetch`. Nothing of it is in
    ``state`` or ``param_groups``, so ``state_dict``, pickling and ``copy.deepcopy`` are unaffected.

    CPU tensors only (on CUDA the kernels are asynchronous already). It pays when a core is idle
    during the rest of the update: torch intra-op threads < cores and one run per machine, and
    enough other work per update to hide the ∇R matmuls. On the MinAtar DQN (one intra-op thread,
    2-core CPU, ``benchmarks/bench_adamo.py``) a full update costs ~1.5× fused Adam with the
    synchronous isometry step and ~1.1–1.2× with prefetch. When every core is busy (two seeds on
    two cores) it saves nothing and costs a thread hand-off per step. Hence off by default, with
    the ``.data`` caveat as second reason.

Note [iso_every]
    ``iso_every = k > 1`` applies the isometry step only on a parameter's steps ``t ≡ 0 (mod k)``,
    with ``k`` times the step size. This is an *approximation* (∇R is held for k steps' worth of
    movement) that divides the cost by k; ``k = 1`` (the default) is the exact method.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from plasticrl.plasticity.isometry import isometry_grad
from plasticrl.plasticity.optimizers import OPTIMIZERS, AdamOOptions, OptimizerConfig, adam_state_keys
from plasticrl.plasticity.prefetch import TensorPrefetch
from torch import Tensor
from torch.optim.adam import adam
from torch.optim.optimizer import ParamsT

__all__ = ["AdamO"]

_ISO_DEFAULTS: dict[str, Any] = {
    "iso_coef": 1e-2,
    "iso_target": 1.0,
    "iso_lr": None,
    "iso_every": 1,
    "iso_prefetch": False,
    "isometry": None,  # None: by tensor rank (Note [Which tensors take the isometry step])
}
"""AdamO's group keys beyond Adam's, with the defaults a checkpoint that lacks them gets."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _takes_isometry(group: dict[str, Any]) -> bool:
    """Whether the ≥2-d tensors of ``group`` take the isometry step (``isometry`` None = yes)."""
    flag = group["isometry"]
    return flag is None or bool(flag)


def _kernels(group: dict[str, Any]) -> tuple[bool, bool]:
    """``(fused, foreach)`` for ``group``, resolving the ``None`` defaults (Note [Adam part])."""
    fused, foreach = group["fused"], group["foreach"]
    if fused and foreach:
        raise RuntimeError("AdamO: fused=True and foreach=True cannot be combined")
    params = group["params"]
    if fused is None:
        fused = foreach is None and all(
            p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
        )
    if foreach is None:
        foreach = not fused and all(p.device.type != "cpu" for p in params)
    return bool(fused), bool(foreach)


class AdamO(torch.optim.Adam):
    r"""Adam plus a decoupled isometry step on weight matrices (AdamO).

    .. math::
       \begin{aligned}
            &\textbf{input}: \eta \text{ (lr)}, \beta_1, \beta_2 \text{ (betas)}, \epsilon,
                \: \mu \text{ (weight decay)}, \: \lambda \text{ (iso\_coef)},
                \: s \text{ (iso\_target)}, \: \eta_{iso} \text{ (iso\_lr, default } \eta),
                \: k \text{ (iso\_every)}                                                    \\
            &\textbf{initialize}: m_0 \leftarrow 0, \: v_0 \leftarrow 0                        \\
            &\textbf{for} \: t = 1 \: \textbf{to} \: \ldots \: \textbf{do}                     \\
            &\quad g_t \leftarrow \pm\nabla_\theta f_t(\theta_{t-1})
                \quad (- \text{ if maximize; the only thing the moments see})                  \\
            &\quad d_t \leftarrow \nabla R(\theta_{t-1}) \text{ if } \theta \text{ takes the
                isometry step and } k \mid t \text{, else } 0                                  \\
            &\qquad R(W) = \lVert G - sI \rVert_F^2, \: G = WW^\top \text{ (out} \le
                \text{in) or } W^\top W, \: \nabla R = 4(WW^\top - sI)W \text{ or }
                4W(W^\top W - sI)                                                              \\
            &\quad m_t \leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad
                v_t \leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2                           \\
            &\quad \hat m_t \leftarrow m_t / (1 - \beta_1^t), \quad
                \hat v_t \leftarrow v_t / (1 - \beta_2^t)                                      \\
            &\quad \theta_t \leftarrow \theta_{t-1} - \eta\mu\theta_{t-1}
                - \eta \, \hat m_t / (\sqrt{\hat v_t} + \epsilon)
                - \eta_{iso} \, k \lambda \, d_t                                               \\
            &\textbf{return} \: \theta_t
       \end{aligned}

    ``∇R`` is evaluated at θ_{t−1}, before the Adam step (docs/methods.md §1.2, [ours]); weight
    decay is decoupled as in AdamW. With ``iso_coef=0`` this is ``torch.optim.AdamW`` (and
    ``torch.optim.Adam`` when ``weight_decay=0``), bit for bit: the Adam part is torch's own
    (Note [Adam part]). ``maximize`` flips the task gradient only; the isometry step always
    descends R. Which tensors take the step: Note [Which tensors take the isometry step].
    Paper: Rosseau, Müller, Nowé, *Preserving Plasticity in Continual Learning via Dynamical
    Isometry*, ICML 2026, https://arxiv.org/abs/2606.09762.

    Args:
        params: tensors or param-group dicts; groups may carry ``isometry`` (bool) and ``kind``.
        lr: η, the learning rate (default 1e-3).
        betas: (β1, β2), moment decay rates (default (0.9, 0.999)).
        eps: ε added to √v̂ (default 1e-8).
        weight_decay: μ, decoupled weight decay as in AdamW (default 0).
        iso_coef: λ, the isometry step coefficient (default 1e-2, [ours]; 0 disables the step).
            The step is ``η_iso·λ·∇R``, so what matters is the product with the learning rate: with
            DQN on permuted Breakout at lr 1e-4, λ = 1e-2 left the hidden layers' isometry gap near
            2, and λ = 1 held it near 0.08 (``docs/results/README.md``, AdamO's λ).
        iso_target: s, the target squared singular value (default 1; 2 is an option for ReLU).
        iso_lr: η_iso; ``None`` (default) reads the group's current ``lr`` so schedules apply.
        iso_every: k; apply the isometry step every k steps with k× its size (default 1 = exact;
            Note [iso_every]).
        iso_prefetch: compute the next step's ∇R on a background thread, for CPU tensors
            (default False; exact, see Note [Isometry prefetch] for when it pays).
        foreach: use the multi-tensor implementation (default None: see ``fused``).
        fused: run the Adam part with torch's fused AdamW kernel. ``None`` (default) picks it when
            ``foreach`` is not set and the group's parameters allow it (Note [Adam part]).
            Cannot be combined with ``foreach=True``.
        maximize: maximize the objective (default False).
        amsgrad: torch's AMSGrad variant of the Adam part (default False).

    Raises:
        ValueError: ``Invalid <name>: <value>`` for an out-of-range or wrongly typed argument.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> opt = AdamO(net.parameters(), lr=1e-3, iso_coef=1e-2)
        >>> net(torch.randn(16, 4)).square().mean().backward()
        >>> opt.step()
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        iso_coef: float = 1e-2,
        iso_target: float = 1.0,
        iso_lr: float | None = None,
        iso_every: int = 1,
        *,
        iso_prefetch: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        maximize: bool = False,
        amsgrad: bool = False,
    ) -> None:
        checks: tuple[tuple[str, object, bool], ...] = (
            ("lr", lr, _is_number(lr) and lr >= 0),
            (
                "betas",
                betas,
                isinstance(betas, tuple | list)
                and len(betas) == 2
                and all(_is_number(b) and 0.0 <= b < 1.0 for b in betas),
            ),
            ("eps", eps, _is_number(eps) and eps >= 0),
            ("weight_decay", weight_decay, _is_number(weight_decay) and weight_decay >= 0),
            ("iso_coef", iso_coef, _is_number(iso_coef) and iso_coef >= 0),
            ("iso_target", iso_target, _is_number(iso_target) and iso_target >= 0),
            ("iso_lr", iso_lr, iso_lr is None or (_is_number(iso_lr) and iso_lr >= 0)),
            (
                "iso_every",
                iso_every,
                isinstance(iso_every, int) and not isinstance(iso_every, bool) and iso_every >= 1,
            ),
            ("iso_prefetch", iso_prefetch, isinstance(iso_prefetch, bool)),
            ("foreach", foreach, foreach is None or isinstance(foreach, bool)),
            ("fused", fused, fused is None or (isinstance(fused, bool) and not (fused and foreach))),
            ("maximize", maximize, isinstance(maximize, bool)),
            ("amsgrad", amsgrad, isinstance(amsgrad, bool)),
        )
        for name, value, ok in checks:
            if not ok:
                raise ValueError(f"Invalid {name}: {value}")
        super().__init__(
            params,
            lr=lr,
            betas=(float(betas[0]), float(betas[1])),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            foreach=foreach,
            maximize=maximize,
            fused=fused,
            decoupled_weight_decay=True,
        )
        iso = {
            **_ISO_DEFAULTS,
            "iso_coef": iso_coef,
            "iso_target": iso_target,
            "iso_lr": iso_lr,
            "iso_every": iso_every,
            "iso_prefetch": iso_prefetch,
        }
        # Groups were added by torch with Adam's defaults; AdamO's keys join them (and the
        # defaults, for later add_param_group calls) without overriding a group's own values.
        self.defaults.update(iso)
        for group in self.param_groups:
            for key, value in iso.items():
                group.setdefault(key, value)
        # torch lets GradScaler hand its scale to a fused kernel, which then skips an inf step
        # itself; the isometry step would still run. Off: GradScaler unscales and skips `step`.
        self._step_supports_amp_scaling = False
        self._prefetch: TensorPrefetch[float] = TensorPrefetch(isometry_grad)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # Also what load_state_dict, deepcopy and unpickling run: checkpoints of the first AdamO
        # (before it subclassed Adam) lack torch's newer keys and some of ours; Adam's defaults
        # fill torch's, except that AdamO's weight decay is always decoupled.
        for group in self.param_groups:
            for key, value in _ISO_DEFAULTS.items():
                group.setdefault(key, value)
            group["decoupled_weight_decay"] = True
        # Not part of the state: a copy or unpickled optimizer starts without a pending prefetch.
        self.__dict__.setdefault("_prefetch", TensorPrefetch(isometry_grad))

    def _iso_due(self, group: dict[str, Any], p: Tensor) -> bool:
        """Whether ``p``'s next step applies the isometry step (Note [iso_every])."""
        every: int = group["iso_every"]
        if every == 1:
            return True
        state = self.state.get(p)  # never creates an entry (state is a defaultdict)
        done = int(state["step"].item()) if state else 0
        return (done + 1) % every == 0

    def _iso_params(self, group: dict[str, Any]) -> list[Tensor]:
        """The tensors of ``group`` that take the isometry step now (Note [Which tensors ...])."""
        if group["iso_coef"] == 0 or not _takes_isometry(group):
            return []
        return [p for p in group["params"] if p.grad is not None and p.dim() >= 2 and self._iso_due(group, p)]

    def _adam_step(self, group: dict[str, Any], fused: bool, foreach: bool) -> None:
        """Torch's Adam(W) update of ``group`` with the resolved kernel flags (Note [Adam part])."""
        if fused:
            # torch keeps `step` on the parameter's device for the fused kernel (elsewhere the CPU
            # is fine); the default kernel is resolved per step, so a loaded state may sit elsewhere.
            for p in group["params"]:
                state = self.state.get(p)
                if state and state["step"].device != p.device:
                    state["step"] = state["step"].to(p.device)
        params: list[Tensor] = []
        grads: list[Tensor] = []
        exp_avgs: list[Tensor] = []
        exp_avg_sqs: list[Tensor] = []
        max_exp_avg_sqs: list[Tensor] = []
        steps: list[Tensor] = []
        resolved = {**group, "fused": fused, "foreach": foreach}  # a view: the group keeps None
        if self._init_group(resolved, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps):
            raise RuntimeError("AdamO does not support complex parameters")  # ∇R is for real W
        beta1, beta2 = group["betas"]
        adam(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            max_exp_avg_sqs,
            steps,
            foreach=foreach,
            fused=fused,
            decoupled_weight_decay=True,
            amsgrad=group["amsgrad"],
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step: torch's Adam(W) step plus the isometry step.

        Args:
            closure: re-evaluates the model and returns the loss (optional).

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        iso_grad = self._prefetch.take()
        for group in self.param_groups:
            fused, foreach = _kernels(group)
            # ∇R at θ_{t−1}, before the Adam step changes θ (docs/methods.md §1.2).
            iso_params = self._iso_params(group)
            iso_grads = [iso_grad(p, group["iso_target"]) for p in iso_params]
            self._adam_step(group, fused, foreach)
            if iso_params:
                # θ ← θ − η_iso (kλ) ∇R(θ_{t−1}): the decoupled isometry step.
                iso_lr = group["iso_lr"] if group["iso_lr"] is not None else group["lr"]
                alpha = -iso_lr * (group["iso_coef"] * group["iso_every"])
                torch._foreach_add_(iso_params, iso_grads, alpha=alpha)
        self._submit_prefetch()
        return loss

    def discard_prefetch(self) -> None:
        """Drop a pending ∇R prefetch, e.g. after editing weights through ``p.data``."""
        self._prefetch.discard()

    def _submit_prefetch(self) -> None:
        """Start ∇R for the next step of every CPU weight due then (Note [Isometry prefetch])."""
        params: list[Tensor] = []
        targets: list[float] = []
        for group in self.param_groups:
            if not (group["iso_prefetch"] and group["iso_coef"] != 0 and _takes_isometry(group)):
                continue
            for p in group["params"]:
                # CPU only: on CUDA the matmuls are asynchronous kernels already, and a worker
                # thread would not see the trainer's current stream.
                if p.dim() >= 2 and p.device.type == "cpu" and self.state.get(p) and self._iso_due(group, p):
                    params.append(p)
                    targets.append(group["iso_target"])
        self._prefetch.submit(params, targets)


@OPTIMIZERS.register("adamo", options=AdamOOptions, state_keys=adam_state_keys(AdamO))
def _adamo_factory(groups: list[dict[str, Any]], cfg: OptimizerConfig) -> AdamO:
    # fused=None lets AdamO choose (fused on CPU/CUDA unless foreach is set), like `adam` here.
    return AdamO(
        groups,
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        iso_coef=cfg.iso_coef,
        iso_target=cfg.iso_target,
        iso_lr=cfg.iso_lr,
        iso_every=cfg.iso_every,
        iso_prefetch=cfg.iso_prefetch,
        foreach=cfg.foreach,
        fused=cfg.fused,
    )
