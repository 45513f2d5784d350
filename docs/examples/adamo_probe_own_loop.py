"""AdamO and the plasticity probe in your own PyTorch loop (no plasticrl trainer involved).

A small MLP regresses a target that changes every ``STEPS_PER_TASK`` steps (a new random linear
teacher each time: a non-stationary supervised problem). The same loop runs once with Adam and
once with AdamO; the probe measures, on a fixed probe batch, the dormant fraction, the feature
rank and each layer's isometry gap ‖WWᵀ − I‖_F² (what AdamO's decoupled step shrinks).

Run: ``python docs/examples/adamo_probe_own_loop.py`` (a few seconds on a CPU).
"""

from __future__ import annotations

import torch
from plasticrl import AdamO, PlasticityProbe, param_groups
from plasticrl.plasticity.metrics import MetricsConfig
from torch import nn

TASKS, STEPS_PER_TASK, IN, OUT = 3, 200, 16, 4


def make_model() -> nn.Module:
    """The network: two hidden ReLU layers and a linear head (any ``nn.Module`` works)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, OUT))


def run(optimizer_name: str) -> dict[str, float]:
    """Train through every task; return the probe's last measurement."""
    model = make_model()
    # param_groups tags hidden matrices (isometry step), the head and the vectors, as plasticrl does.
    groups = param_groups(model)
    if optimizer_name == "adamo":
        optimizer: torch.optim.Optimizer = AdamO(groups, lr=1e-3, iso_coef=1.0)
    else:
        optimizer = torch.optim.Adam(groups, lr=1e-3)
    # The probe hooks the network now (it snapshots the initial weights for distance-to-init).
    probe = PlasticityProbe(model, MetricsConfig(every=100, probe_size=128, ntk_every=0, jacobian=False))
    gen = torch.Generator().manual_seed(1)
    probe_obs = torch.randn(128, IN, generator=gen)
    scalars: dict[str, float] = {}
    for task in range(TASKS):
        teacher = torch.randn(IN, OUT, generator=gen)
        for step in range(STEPS_PER_TASK):
            x = torch.randn(64, IN, generator=gen)
            loss = nn.functional.mse_loss(model(x), x @ teacher)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            updates = task * STEPS_PER_TASK + step + 1
            if probe.due(updates):
                scalars = probe(probe_obs, optimizer=optimizer)
        print(f"{optimizer_name:>5} task {task}: loss {loss.item():.4f}")
    return scalars


def main() -> None:
    """Compare Adam and AdamO on the isometry gap of the hidden layers."""
    torch.set_num_threads(1)  # small networks: one thread is fastest (plasticrl's default too)
    results = {name: run(name) for name in ("adam", "adamo")}
    hidden = ("0", "2")  # the hidden Linear layers (module names); "4" is the head, left alone
    gaps = {}
    for name, scalars in results.items():
        gaps[name] = sum(scalars[f"plasticity/isometry_gap/{layer}"] for layer in hidden) / len(hidden)
        print(
            f"{name:>5}: hidden layers' mean isometry gap {gaps[name]:.3f}, "
            f"dormant (tau=0) {scalars['plasticity/dormant_fraction/tau_0']:.3f}, "
            f"srank {scalars['plasticity/srank']:.0f}"
        )
    # AdamO's decoupled step pulls the hidden matrices toward isometry; Adam does not.
    assert gaps["adamo"] < gaps["adam"], gaps
    print("ok")


if __name__ == "__main__":
    main()
