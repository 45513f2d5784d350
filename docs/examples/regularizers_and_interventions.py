"""Regularizers and interventions by name, in your own PyTorch loop.

Every regularizer of a config's ``regularizers`` list (``isometry``, ``spectral``, ``parseval``,
``l2_init``) is a callable bound to a model: add ``reg()`` to the loss. Every intervention of
``interventions`` (``redo``, ``shrink_perturb``, ``cbp``) edits the model *and the optimizer
state of exactly the slices it edits* when you call ``after_update`` after each update.

Here half of the first layer's units start dead (a large negative bias); ReDo recycles them,
and the probe shows the dormant fraction before and after. A spectral penalty keeps the largest
singular value of each matrix in check meanwhile.

Run: ``python docs/examples/regularizers_and_interventions.py`` (a few seconds on a CPU).
"""

from __future__ import annotations

import torch
from plasticrl import PlasticityProbe, param_groups
from plasticrl.plasticity.interventions import InterventionConfig, make_interventions
from plasticrl.plasticity.metrics import MetricsConfig
from plasticrl.plasticity.regularizers import RegularizerConfig, make_regularizers
from torch import nn


def main() -> None:
    """Train a regression with a spectral penalty and ReDo; print what each did."""
    torch.set_num_threads(1)  # small networks: one thread is fastest (plasticrl's default too)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    with torch.no_grad():
        model[0].bias[:32] = -100.0  # 32 of 64 units never fire: dormant from the start
    groups = param_groups(model)
    optimizer = torch.optim.Adam(groups, lr=1e-3)
    regularizers = make_regularizers(model, groups, [RegularizerConfig("spectral", coef=1e-3)])
    interventions = make_interventions(
        model,
        optimizer,
        [InterventionConfig("redo", {"every": 200, "tau": 0.0})],
        example_obs=torch.zeros(1, 8),
        seed=0,
    )
    probe = PlasticityProbe(model, MetricsConfig(every=1, probe_size=256, ntk_every=0, jacobian=False))
    gen = torch.Generator().manual_seed(0)
    probe_obs = torch.randn(256, 8, generator=gen)
    before = probe(probe_obs)["plasticity/dormant_fraction/tau_0/1"]  # layer "1": the first ReLU
    for update in range(1, 401):
        x = torch.randn(64, 8, generator=gen)
        loss = nn.functional.mse_loss(model(x), x.sum(1, keepdim=True).sin())
        loss = loss + sum(reg() for reg in regularizers)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for intervention in interventions:
            logged = intervention.after_update(update, model, optimizer, probe_obs)
            if logged:
                print(f"update {update}: {logged}")
    after = probe(probe_obs)["plasticity/dormant_fraction/tau_0/1"]
    print(f"first layer dormant fraction: {before:.2f} before, {after:.2f} after ReDo")
    assert before >= 0.5 and after < before
    print("ok")


if __name__ == "__main__":
    main()
