"""The AdamO paper's protocol preset and study: every arm trains, with the protocol's pieces in place."""

from __future__ import annotations

from pathlib import Path

import pytest
from plasticrl.trainers.config import load_config
from plasticrl.trainers.experiments.plot import read_scalars
from plasticrl.trainers.experiments.sweep import plan_sweep
from plasticrl.trainers.experiments.sweep_file import load_sweep
from plasticrl.trainers.run import train

pytest.importorskip("minatar")

STUDIES = Path(__file__).resolve().parents[2] / "configs/studies"
TINY = (
    "env.num_envs=2",
    "agent.num_steps=16",
    "agent.num_minibatches=2",
    "agent.update_epochs=1",
    "total_steps=320",
    "nonstationary.every=64",
    "eval.every=160",
    "eval.episodes=2",
    "eval.max_episode_steps=50",
    "metrics.every=2",
    "metrics.ntk_every=0",
    "logging.every=32",
    "checkpoint.every=0",
)


def test_the_protocol_preset_is_the_protocol() -> None:
    cfg = load_config(STUDIES.parent / "minatar/ppo_continual.yaml")
    ns, agent, net, opt = cfg.nonstationary, cfg.agent, cfg.network, cfg.optimizer
    assert cfg.env.num_envs == 2048 and agent.num_steps == 128  # type: ignore[attr-defined]
    assert (agent.num_minibatches, agent.update_epochs) == (128, 4)  # type: ignore[attr-defined]
    assert list(ns.tasks) == ["breakout", "asterix", "space_invaders", "freeway"]
    assert ns.every == 15_000_000 and cfg.total_steps == 15_000_000 * 4 * 20
    assert ns.pad_to == (10, 10, 10) and tuple(ns.kind) == ("switch", "permute_obs")
    assert (opt.name, opt.lr, opt.eps, opt.lr_schedule) == ("adam", 2.5e-4, 1e-5, "constant")
    assert opt.reset_on_task_switch and net.hidden_sizes == (64, 64, 64, 64) and net.init == "orthogonal"
    assert (cfg.eval.every, cfg.eval.episodes, cfg.eval.policy) == (500_000, 128, "sample")
    spec = load_sweep(STUDIES / "continual_minatar_ppo.yaml")
    assert spec.seeds == tuple(range(26, 34))


@pytest.mark.parametrize("study", ["continual_minatar_ppo.yaml", "continual_minatar_ppo_reduced.yaml"])
def test_every_arm_of_the_study_trains_a_few_hundred_steps(study: str, runs_dir: Path) -> None:
    spec = load_sweep(STUDIES / study)
    firsts = {}
    for run in plan_sweep(spec):
        firsts.setdefault(run.method, run)
    assert set(firsts) == {"adam", "adamo", "adamo_relu", "nap", "l2_init_1e-3", "l2_init_1e-2", "spectral"}
    if study.endswith("_reduced.yaml"):  # the reduced study: each arm only plans (the full one trains)
        return
    for method, run in firsts.items():
        overrides = [o for o in run.overrides if not o.startswith("logging.")]
        cfg = load_config(
            run.preset, [*overrides, *TINY, f"logging.dir={runs_dir}", f"logging.name={method}"]
        )
        result = train(cfg, quiet=True)
        assert result.status == "finished" and result.global_step == 320, method
        scalars = read_scalars(result.run_dir)
        assert scalars["optimizer/resets"][1][-1] >= 3, method  # boundaries at 64, 128, 192, 256
        assert "eval/episodic_return" in scalars and any(
            t.startswith("eval/episodic_return/game_") for t in scalars
        )
        assert any(t.startswith("plasticity/") for t in scalars), method


def test_the_arms_study_and_its_lambda_sweep_plan_the_papers_arms_on_the_study_setting(
    runs_dir: Path,
) -> None:
    """protocol_arms.yaml: every arm but Adam (its runs are plasticity_loss_adam's), same setting;
    the two arms no other study trains (the coupled ablation, the isometric MLP) train on the
    batched games."""
    setting = load_sweep(STUDIES / "plasticity_loss_adam.yaml").overrides
    arms = load_sweep(STUDIES / "protocol_arms.yaml")
    assert arms.seeds == tuple(range(26, 34)) and arms.overrides == setting
    firsts = {}
    for run in plan_sweep(arms):
        firsts.setdefault(run.method, run)
    assert list(firsts) == [
        "adamo",
        "adamo_relu",
        "adam_iso_coupled",
        "nap",
        "l2_init",
        "spectral",
        "isometric",
    ]
    lam = load_sweep(STUDIES / "adamo_lambda_protocol.yaml")
    assert lam.seeds == (0, 1, 2) and not set(lam.seeds) & set(arms.seeds)
    assert [o for o in lam.overrides if not o.startswith("optimizer.") and not o.startswith("network.")] == [
        "total_steps=8388608" if o.startswith("total_steps") else o for o in setting
    ]
    for method in ("adam_iso_coupled", "isometric"):
        run = firsts[method]
        overrides = [o for o in run.overrides if not o.startswith("logging.")]
        cfg = load_config(
            run.preset,
            [*overrides, *TINY, "agent.compile=false", f"logging.dir={runs_dir}", f"logging.name={method}"],
        )
        result = train(cfg, quiet=True)
        assert result.status == "finished" and result.global_step == 320, method
        scalars = read_scalars(result.run_dir)
        assert "eval/episodic_return" in scalars and any(
            t.startswith("plasticity/isometry_gap/") for t in scalars
        )
