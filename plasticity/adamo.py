"""AdamO: Adam with a decoupled isometry step (Rosseau, Müller, Nowé, ICML 2026).

Contains:
    AdamO: the optimizer (``plasticity.AdamO``), shaped like ``torch.optim.AdamW``.
    adamo: the functional form, dispatching to ``_single_tensor_adamo`` (the readable reference),
        ``_multi_tensor_adamo`` (``foreach``) and ``_fused_adamo`` (torch's fused AdamW kernel).
    The ``"adamo"`` factory in :data:`plasticrl.plasticity.optimizers.OPTIMIZERS`.

Paper: *Preserving Plasticity in Continual Learning via Dynamical Isometry*, arXiv 2606.09762.
The maths of the isometry term lives in :mod:`plasticrl.plasticity.isometry`; docs/methods.md §1 is the spec.

Note [Which tensors take the isometry step]
    Decided by the param-group key ``isometry`` set by :func:`plasticrl.plasticity.optimizers.param_groups`
    (Note [Parameter groups]), never by inspecting modules inside ``step``:
    ``True`` → every tensor of the group with two or more dimensions; ``False`` → none;
    absent (plain ``AdamO(model.parameters())``, stored as ``None``) → every tensor with two or more
    dimensions. A parameter whose ``grad`` is ``None`` is skipped entirely, as in Adam, so frozen or
    unused tensors are never moved by the isometry step either.

Note [Isometry prefetch]
    ∇R(θ_t) depends only on the weights, which are final as soon as step t−1 returns. With
    ``iso_prefetch=True`` the end of each ``step`` submits ∇R for the next step to one background
    thread; matmuls release the GIL, so it runs on an otherwise idle core while the trainer steps
    the env, acts and runs the forward/backward of the next update, and the next ``step`` only
    waits for it (normally already done) and adds it. The values are those the synchronous path
    computes, provided the weights did not change in between. Guard: each parameter's
    ``_version`` (bumped by every in-place op: ``load_state_dict``, ``p.copy_``, ``p[idx] = ...``,
    this optimizer's own updates) and ``data_ptr`` are recorded at submission and compared at
    use; a mismatch, a changed ``iso_target`` or a missing entry recomputes synchronously. Writes
    through ``p.data`` bump no ``_version``: code that edits weights that way must call
    :meth:`AdamO.discard_prefetch`. Nothing thread-related is kept in ``state`` or
    ``param_groups``, so ``state_dict``, pickling and ``copy.deepcopy`` are unaffected (a copy
    starts with no pending prefetch); a forked child starts its own worker.

    CPU tensors only (on CUDA the kernels are asynchronous already). It pays when a core is idle
    during the rest of the update: torch intra-op threads < cores and one run per machine, and
    enough other work per update (forward/backward, env step) to hide the ∇R matmuls. On the
    MinAtar DQN (one intra-op thread, 2-core CPU, ``benchmarks/bench_adamo.py``) a full update
    costs ~1.5× fused Adam with the synchronous isometry step and ~1.1–1.2× with prefetch; what
    remains on the trainer thread (~0.1 ms) is the hand-off, the extra pass that adds ∇R, and
    cache traffic. When every core is busy (two seeds on two cores) it saves nothing and costs a
    thread hand-off per step. Hence off by default, with the ``.data`` caveat as second reason.

Note [iso_every]
    ``iso_every = k > 1`` applies the isometry step only on a parameter's steps ``t ≡ 0 (mod k)``,
    with ``k`` times the step size. This is an *approximation* (∇R is held for k steps' worth of
    movement) that divides the cost by k; ``k = 1`` (the default) is the exact method.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from plasticrl.plasticity.isometry import isometry_grad
from plasticrl.plasticity.optimizers import OPTIMIZERS, AdamOOptions, OptimizerConfig
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

__all__ = ["AdamO", "adamo"]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _takes_isometry(group: dict[str, Any]) -> bool:
    """Whether the ≥2-d tensors of ``group`` take the isometry step (``isometry`` None = yes)."""
    flag = group["isometry"]
    return flag is None or bool(flag)


class AdamO(Optimizer):
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

    ``∇R`` is evaluated at θ_{t−1}, before the Adam step (docs/methods.md §1.2, [ours]); weight decay is
    decoupled as in AdamW. With ``iso_coef=0`` this is ``torch.optim.Adam`` (``weight_decay=0``)
    or ``torch.optim.AdamW``. ``maximize`` flips the task gradient only; the isometry step always
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
        fused: run the Adam part with torch's fused AdamW kernel (one pass per tensor; ~4× faster
            than the loop on a small CPU network). ``None`` (default) picks fused when ``foreach``
            is not set and every parameter is a floating-point tensor on the CPU or CUDA, else
            ``foreach`` off the CPU and the single-tensor loop on it. Cannot be combined with
            ``foreach=True``.
        maximize: maximize the objective (default False).

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
        )
        for name, value, ok in checks:
            if not ok:
                raise ValueError(f"Invalid {name}: {value}")
        defaults: dict[str, Any] = {
            "lr": lr,
            "betas": (float(betas[0]), float(betas[1])),
            "eps": eps,
            "weight_decay": weight_decay,
            "iso_coef": iso_coef,
            "iso_target": iso_target,
            "iso_lr": iso_lr,
            "iso_every": iso_every,
            "iso_prefetch": iso_prefetch,
            "isometry": None,  # None: by tensor rank (Note [Which tensors take the isometry step])
            "foreach": foreach,
            "fused": fused,
            "maximize": maximize,
        }
        super().__init__(params, defaults)
        self._iso_pending: _Prefetch | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # Keys added after the first release (and every flag) get their defaults when loading
        # older state; everything below is also what a deepcopy/unpickle restores.
        for group in self.param_groups:
            group.setdefault("iso_coef", 1e-2)
            group.setdefault("iso_target", 1.0)
            group.setdefault("iso_lr", None)
            group.setdefault("iso_every", 1)
            group.setdefault("iso_prefetch", False)
            group.setdefault("isometry", None)
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            group.setdefault("maximize", False)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if p_state and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=torch.float32)
        # Not part of the state: a pending prefetch stays valid across load_state_dict (the
        # weights are checked at use); a copy or unpickled optimizer starts without one.
        self.__dict__.setdefault("_iso_pending", None)

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        state_steps: list[Tensor],
        iso_mask: list[bool],
    ) -> None:
        """Fill the parallel lists for the params of ``group`` that have a gradient; lazy state."""
        takes_iso = _takes_isometry(group)
        # The fused kernel reads `step` on the parameter's device; the loops read it on the CPU.
        fused = _implementation(group["params"], group["foreach"], group["fused"]) == "fused"
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("AdamO does not support sparse gradients")
            if torch.is_complex(p):
                raise RuntimeError("AdamO does not support complex parameters")
            state = self.state[p]
            step_device = p.device if fused else torch.device("cpu")
            if len(state) == 0:
                # `step` is a float32 tensor, as in torch.optim.Adam.
                state["step"] = torch.zeros((), dtype=torch.float32, device=step_device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif state["step"].device != step_device:
                state["step"] = state["step"].to(step_device)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            state_steps.append(state["step"])
            iso_mask.append(takes_iso and p.dim() >= 2)

    @staticmethod
    def _iso_due(group: dict[str, Any], step: Tensor, ahead: int) -> bool:
        """Whether the step ``step + ahead`` of a parameter applies the isometry step."""
        every = group["iso_every"]
        return every == 1 or (int(step.item()) + ahead) % every == 0

    def _isometry_grads(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        state_steps: list[Tensor],
        iso_mask: list[bool],
        prefetched: dict[Tensor, tuple[float, Tensor]],
    ) -> list[Tensor | None]:
        """∇R(θ_t) for each param taking the isometry step on this step, else None."""
        if group["iso_coef"] == 0:
            return [None] * len(params)
        target = group["iso_target"]
        out: list[Tensor | None] = []
        for p, step, takes_iso in zip(params, state_steps, iso_mask, strict=True):
            if not takes_iso or not self._iso_due(group, step, 1):
                out.append(None)
                continue
            ready = prefetched.pop(p, None)
            out.append(ready[1] if ready is not None and ready[0] == target else isometry_grad(p, target))
        return out

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step.

        Args:
            closure: re-evaluates the model and returns the loss (optional).

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        prefetched = self._take_prefetch()
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            exp_avgs: list[Tensor] = []
            exp_avg_sqs: list[Tensor] = []
            state_steps: list[Tensor] = []
            iso_mask: list[bool] = []
            self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, state_steps, iso_mask)
            # ∇R at θ_t, before the Adam step changes θ (docs/methods.md §1.2).
            iso_grads = self._isometry_grads(group, params, state_steps, iso_mask, prefetched)
            beta1, beta2 = group["betas"]
            iso_lr = group["iso_lr"] if group["iso_lr"] is not None else group["lr"]
            adamo(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                state_steps,
                iso_grads,
                foreach=group["foreach"],
                fused=group["fused"],
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                iso_coef=group["iso_coef"] * group["iso_every"],
                iso_lr=iso_lr,
                maximize=group["maximize"],
            )
        self._launch_prefetch()
        return loss

    # -- Note [Isometry prefetch] ------------------------------------------------------------

    def discard_prefetch(self) -> None:
        """Drop a pending ∇R prefetch, e.g. after editing weights through ``p.data``."""
        self._iso_pending = None

    def _launch_prefetch(self) -> None:
        params: list[Tensor] = []
        targets: list[float] = []
        for group in self.param_groups:
            if not (group["iso_prefetch"] and group["iso_coef"] != 0 and _takes_isometry(group)):
                continue
            for p in group["params"]:
                state = self.state.get(p)
                # CPU only: on CUDA the matmuls are asynchronous kernels already, and a worker
                # thread would not see the trainer's current stream.
                if (
                    p.dim() >= 2
                    and p.device.type == "cpu"
                    and state
                    and self._iso_due(group, state["step"], 1)
                ):
                    params.append(p)
                    targets.append(group["iso_target"])
        if not params:
            self._iso_pending = None
            return
        # Detach on this thread: the worker then holds the current storage even if `p.data` is
        # later rebound, and never touches autograd metadata.
        weights = [p.detach() for p in params]
        future = _submit(_isometry_grads_task, weights, targets)
        self._iso_pending = _Prefetch(
            future, params, [p._version for p in params], [p.data_ptr() for p in params], targets
        )

    def _take_prefetch(self) -> dict[Tensor, tuple[float, Tensor]]:
        pending, self._iso_pending = self._iso_pending, None
        if pending is None:
            return {}
        try:
            grads = pending.future.result()
        except Exception:  # the synchronous recomputation below raises it where it belongs
            return {}
        return {
            p: (target, grad)
            for p, version, ptr, target, grad in zip(
                pending.params,
                pending.versions,
                pending.data_ptrs,
                pending.targets,
                grads,
                strict=True,
            )
            if p._version == version and p.data_ptr() == ptr
        }


@dataclass
class _Prefetch:
    """A submitted ∇R computation and the weight fingerprints it is valid for."""

    future: Future[list[Tensor]]
    params: list[Tensor]
    versions: list[int]
    data_ptrs: list[int]
    targets: list[float]


def _isometry_grads_task(weights: list[Tensor], targets: list[float]) -> list[Tensor]:
    return [isometry_grad(w, s) for w, s in zip(weights, targets, strict=True)]


_worker: ThreadPoolExecutor | None = None
_worker_lock = threading.Lock()


def _submit(fn: Callable[..., list[Tensor]], *args: Any) -> Future[list[Tensor]]:
    """Run ``fn`` on the process-wide prefetch thread (one thread: one spare core)."""
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adamo-iso")
        return _worker.submit(fn, *args)


def _forget_worker_after_fork() -> None:
    # A forked child has no copy of the worker thread; it starts its own on first use.
    global _worker, _worker_lock
    _worker, _worker_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_worker_after_fork)


def _implementation(params: list[Tensor], foreach: bool | None, fused: bool | None) -> str:
    """``"fused"``, ``"foreach"`` or ``"single"``, resolving the ``None`` defaults (see AdamO)."""
    if fused and foreach:
        raise RuntimeError("AdamO: fused=True and foreach=True cannot be combined")
    if fused is None:
        fused = foreach is None and all(
            p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
        )
    if fused:
        return "fused"
    if foreach is None:
        foreach = all(p.device.type != "cpu" for p in params)
    return "foreach" if foreach else "single"


def adamo(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    iso_grads: list[Tensor | None],
    *,
    foreach: bool | None = None,
    fused: bool | None = None,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    iso_coef: float,
    iso_lr: float,
    maximize: bool,
) -> None:
    """Functional AdamO: update ``params`` and the state lists in place (see :class:`AdamO`).

    Args:
        params: parameters with a gradient.
        grads: their task gradients.
        exp_avgs: first moments m.
        exp_avg_sqs: second moments v.
        state_steps: step counters (0-d float tensors), incremented here.
        iso_grads: ∇R(θ_t) of each parameter, evaluated at the current weights before this call,
            or None where the parameter takes no isometry step.
        foreach: multi-tensor implementation (None: see ``fused``).
        fused: torch's fused AdamW kernel for the Adam part; None: on when ``foreach`` is None
            and every param is a floating-point CPU or CUDA tensor.
        lr: η.
        beta1: β1.
        beta2: β2.
        eps: ε.
        weight_decay: μ (decoupled).
        iso_coef: the multiplier of ∇R (λ, times k with ``iso_every=k``).
        iso_lr: η_iso.
        maximize: maximize the task objective.
    """
    impl = {"fused": _fused_adamo, "foreach": _multi_tensor_adamo, "single": _single_tensor_adamo}[
        _implementation(params, foreach, fused)
    ]
    impl(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        state_steps,
        iso_grads,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        iso_coef=iso_coef,
        iso_lr=iso_lr,
        maximize=maximize,
    )


def _single_tensor_adamo(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    iso_grads: list[Tensor | None],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    iso_coef: float,
    iso_lr: float,
    maximize: bool,
) -> None:
    for i, param in enumerate(params):
        grad = grads[i] if not maximize else -grads[i]
        exp_avg, exp_avg_sq, step_t = exp_avgs[i], exp_avg_sqs[i], state_steps[i]

        step_t += 1
        step = step_t.item()

        # θ ← θ − ημθ: decoupled weight decay (AdamW).
        if weight_decay != 0:
            param.mul_(1 - lr * weight_decay)

        # m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²: the moments see only the task gradient.
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

        # θ ← θ − η m̂ / (√v̂ + ε), with the bias corrections folded into the step size.
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)

        # θ ← θ − η_iso λ ∇R(θ_t): the decoupled isometry step.
        iso_grad = iso_grads[i]
        if iso_grad is not None:
            param.add_(iso_grad, alpha=-iso_lr * iso_coef)


def _multi_tensor_adamo(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    iso_grads: list[Tensor | None],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    iso_coef: float,
    iso_lr: float,
    maximize: bool,
) -> None:
    for indices in _by_device_and_dtype(params).values():
        dev_params = [params[i] for i in indices]
        dev_grads = [grads[i] for i in indices]
        dev_exp_avgs = [exp_avgs[i] for i in indices]
        dev_exp_avg_sqs = [exp_avg_sqs[i] for i in indices]
        dev_steps = [state_steps[i] for i in indices]

        if maximize:
            dev_grads = list(torch._foreach_neg(dev_grads))
        # CPU step counters: one wrapped scalar tensor instead of one per counter.
        torch._foreach_add_(dev_steps, torch.tensor(1.0), alpha=1.0)

        if weight_decay != 0:
            torch._foreach_mul_(dev_params, 1 - lr * weight_decay)

        torch._foreach_lerp_(dev_exp_avgs, dev_grads, 1 - beta1)
        torch._foreach_mul_(dev_exp_avg_sqs, beta2)
        torch._foreach_addcmul_(dev_exp_avg_sqs, dev_grads, dev_grads, 1 - beta2)

        steps = [s.item() for s in dev_steps]
        step_sizes = [-lr / (1 - beta1**step) for step in steps]
        bias_correction2_sqrt = [(1 - beta2**step) ** 0.5 for step in steps]
        denoms = torch._foreach_sqrt(dev_exp_avg_sqs)
        torch._foreach_div_(denoms, bias_correction2_sqrt)
        torch._foreach_add_(denoms, eps)
        torch._foreach_addcdiv_(dev_params, dev_exp_avgs, denoms, step_sizes)

        _add_isometry_step(params, iso_grads, indices, -iso_lr * iso_coef)


def _fused_adamo(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    iso_grads: list[Tensor | None],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    iso_coef: float,
    iso_lr: float,
    maximize: bool,
) -> None:
    # The Adam part is exactly torch.optim.AdamW(fused=True)'s kernel; the isometry step follows.
    for indices in _by_device_and_dtype(params).values():
        dev_params = [params[i] for i in indices]
        dev_steps = [state_steps[i] for i in indices]
        torch._foreach_add_(dev_steps, 1)
        torch._fused_adamw_(
            dev_params,
            [grads[i] for i in indices],
            [exp_avgs[i] for i in indices],
            [exp_avg_sqs[i] for i in indices],
            [],
            dev_steps,
            amsgrad=False,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=weight_decay,
            eps=eps,
            maximize=maximize,
            grad_scale=None,
            found_inf=None,
        )
        _add_isometry_step(params, iso_grads, indices, -iso_lr * iso_coef)


def _by_device_and_dtype(params: list[Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """Indices of ``params`` bucketed by (device, dtype): foreach and fused kernels take one each."""
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        buckets.setdefault((p.device, p.dtype), []).append(i)
    return buckets


def _add_isometry_step(
    params: list[Tensor], iso_grads: list[Tensor | None], indices: list[int], alpha: float
) -> None:
    """θ ← θ + alpha · ∇R(θ_t) for the params among ``indices`` that take the isometry step."""
    pairs = [(params[i], iso_grads[i]) for i in indices if iso_grads[i] is not None]
    if pairs:
        torch._foreach_add_([p for p, _ in pairs], [g for _, g in pairs], alpha=alpha)


@OPTIMIZERS.register("adamo", options=AdamOOptions)
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
