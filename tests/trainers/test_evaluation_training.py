"""Evaluation during training (``eval.*``): own envs and stream, the current task, training untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from plasticrl.trainers.config import ConfigError, load_config
from plasticrl.trainers.experiments.plot import read_scalars
from plasticrl.trainers.run import train

from tests.conftest import TINY_DQN_OVERRIDES

REPO = Path(__file__).resolve().parents[2]
SWITCHING = ("nonstationary.kind=permute_obs", "nonstationary.every=200", "nonstationary.on=step")


def _params(agent: object) -> list[torch.Tensor]:
    return [p.detach().clone() for p in agent.model.parameters()]  # type: ignore[attr-defined]


def _dqn(runs: Path, *extra: str) -> object:
    return train(
        load_config(None, [*TINY_DQN_OVERRIDES, *SWITCHING, f"logging.dir={runs}", *extra]), quiet=True
    )


def _ppo(runs: Path, *extra: str) -> object:
    overrides = [
        "total_steps=1024",
        "agent.num_steps=64",
        "agent.num_minibatches=2",
        "agent.update_epochs=1",
        *SWITCHING,
        f"logging.dir={runs}",
        *extra,
    ]
    return train(load_config(REPO / "configs/cartpole/ppo.yaml", overrides), quiet=True)


@pytest.mark.parametrize("run", [_dqn, _ppo], ids=["dqn", "ppo"])
def test_training_is_bit_identical_with_evaluation_on_or_off(run: object, tmp_path: Path) -> None:
    off = run(tmp_path / "off")  # type: ignore[operator]
    on = run(tmp_path / "on", "eval.every=256", "eval.episodes=3", "eval.policy=sample")  # type: ignore[operator]
    for a, b in zip(_params(off.agent), _params(on.agent), strict=True):
        assert torch.equal(a, b)
    tags_off, tags_on = read_scalars(off.run_dir), read_scalars(on.run_dir)
    assert tags_off["charts/episodic_return"] == tags_on["charts/episodic_return"]
    steps, returns = tags_on["eval/episodic_return"]
    # every 256 steps (PPO: at the first rollout boundary past it) and at the end
    assert 256 <= steps[0] < 256 + 64 * 8 and steps[-1] == on.global_step
    assert all(np.isfinite(returns)) and "eval/episodic_return" not in tags_off
    # the evaluation reports the task the training envs ran at that step
    eval_tasks = {tag for tag in tags_on if tag.startswith("eval/episodic_return/task_")}
    assert len(eval_tasks) >= 2


def test_evaluation_is_deterministic_and_resumes_exactly(runs_dir: Path) -> None:
    a = _dqn(runs_dir / "a", "eval.every=200", "eval.episodes=4")
    b = _dqn(runs_dir / "b", "eval.every=200", "eval.episodes=4")
    assert read_scalars(a.run_dir)["eval/episodic_return"] == read_scalars(b.run_dir)["eval/episodic_return"]
    # a run that stops at 300 and resumes to 600 evaluates as the uninterrupted one
    from plasticrl.trainers.run import resume

    first = _dqn(runs_dir / "c", "eval.every=200", "eval.episodes=4", "total_steps=300")
    resumed = resume(first.run_dir, ["total_steps=600"], quiet=True)
    got = dict(zip(*read_scalars(resumed.run_dir)["eval/episodic_return"], strict=True))
    want = dict(zip(*read_scalars(a.run_dir)["eval/episodic_return"], strict=True))
    assert sorted(got) == [200, 300, 400, 600]  # 300: the end of the first run is evaluated too
    assert {step: got[step] for step in want} == want


def test_greedy_evaluation_of_a_fixed_policy_uses_no_randomness_but_the_resets(runs_dir: Path) -> None:
    one = _dqn(runs_dir / "g1", "eval.every=300", "eval.episodes=2", "eval.policy=greedy")
    two = _dqn(runs_dir / "g2", "eval.every=300", "eval.episodes=2", "eval.policy=sample", "eval.epsilon=0")
    # ε = 0 sampling is the greedy policy: the same returns from the same reset seeds
    assert (
        read_scalars(one.run_dir)["eval/episodic_return"] == read_scalars(two.run_dir)["eval/episodic_return"]
    )


def test_bad_eval_values_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"eval.episodes must be >= 1"):
        load_config(None, ["eval.episodes=0"])
    with pytest.raises(
        ConfigError, match=r"eval.policy: invalid value 'best'; valid choices: \['sample', 'greedy'\]"
    ):
        load_config(None, ["eval.policy=best"])


def test_the_report_scores_evaluation_episodes_when_a_run_has_them(runs_dir: Path) -> None:
    from plasticrl.trainers.experiments.report import load_run
    from plasticrl.trainers.logging import EVAL_RETURN_TAG, RETURN_TAG

    with_eval = _dqn(runs_dir / "e", "eval.every=200", "eval.episodes=2")
    without = _dqn(runs_dir / "n")
    run = load_run(with_eval.run_dir)
    assert run.returns_tag == EVAL_RETURN_TAG
    assert run.returns == read_scalars(with_eval.run_dir)[EVAL_RETURN_TAG]
    assert load_run(without.run_dir).returns_tag == RETURN_TAG
