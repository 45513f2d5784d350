"""Feed ``plasticrl`` bad inputs and print what each does, as a markdown table.

    python benchmarks/bad_inputs.py [--only SUBSTRING] [--timeout 60]

The rule every row should meet (issue 17): exit code 2, exactly one line on stderr naming the bad
value, where it came from (file or override) and the valid choices or range, and nothing written
(no run folder). A few rows are not bad input and are held to their own rule, shown in the
``expect`` column: an env's own exception keeps its traceback (exit 1) and the note about the
kept checkpoint. Each row runs the real console command in a fresh folder, so the table can be
re-run after any change; the ``ok`` column says whether the row met its rule.

Set-up (once, in a temp folder): a tiny finished run to resume, corrupted and foreign
checkpoints, binary and empty config files, and a module ``badparts.py`` with envs that break
their declared observation space, a network factory and an optimizer factory of the wrong
signature, and a non-callable attribute.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BADPARTS = '''
import gymnasium as gym
import numpy as np


class WrongDtypeEnv(gym.Env):
    """Declares float32 observations, returns float64 ones."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(4, np.float64), {}

    def step(self, action):
        return np.zeros(4, np.float64), 0.0, False, False, {}


class WrongShapeEnv(WrongDtypeEnv):
    """Declares (4,) observations, returns (5,) ones."""

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(5, np.float32), {}

    def step(self, action):
        return np.zeros(5, np.float32), 0.0, False, False, {}


class StepBugEnv(WrongDtypeEnv):
    """A correct env until step 250, where its own code raises."""

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = getattr(self, "t", 0)
        return np.zeros(4, np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t == 250:
            raise RuntimeError("bug in the env's own step")
        return np.zeros(4, np.float32), 1.0, self.t % 20 == 0, False, {}


class StepShapeEnv(WrongDtypeEnv):
    """Right at reset, a wrong shape from the first step on."""

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(4, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 0.0, False, False, {}


class NotAWrapper:
    def __init__(self):
        pass


def callback_needing_args(a, b):
    return None


def no_args_network():
    return None


def two_args_optimizer(params):
    return None


NOT_CALLABLE = 3
'''

TINY_YAML = """\
env: {id: CartPole-v1}
total_steps: 200
agent: {learning_starts: 50, buffer_size: 500, batch_size: 16}
network: {hidden_sizes: [16]}
logging: {progress: false}
checkpoint: {every: 100}
"""
"""A CartPole DQN run of a second or two: what a case trains if its bad input is (wrongly) accepted."""

TINY_PPO_YAML = """\
env: {id: CartPole-v1}
total_steps: 256
agent: {name: ppo, num_steps: 32, num_minibatches: 2, update_epochs: 1}
network: {hidden_sizes: [16]}
logging: {progress: false}
"""


@dataclass(frozen=True)
class Case:
    """One bad input: a label, the command's arguments and the exit code it should end with."""

    label: str
    argv: tuple[str, ...]
    expect: int = 2


def _cases() -> list[Case]:
    t = "tiny.yaml"
    cases = [
        # ---- the config path
        Case("config path does not exist", ("train", "nope.yaml")),
        Case("config path is a directory", ("train", "adir")),
        Case("config path is a binary file", ("train", "binary.yaml")),
        Case("config file is empty", ("train", "empty.yaml")),
        Case("config file holds only comments", ("train", "comments.yaml")),
        Case("malformed YAML (bad indentation)", ("train", "malformed.yaml")),
        Case("malformed YAML (unclosed bracket)", ("train", "unclosed.yaml")),
        Case("YAML top level is a list", ("train", "list.yaml")),
        Case("YAML top level is a scalar", ("train", "scalar.yaml")),
        Case("config file is not UTF-8", ("train", "latin1.yaml")),
        Case("unknown key in the file", ("train", "unknown_key.yaml")),
        Case("wrong type in the file", ("train", "wrong_type.yaml")),
        Case("base: chain loops", ("train", "loop_a.yaml")),
        Case("base: file missing", ("train", "base_missing.yaml")),
        Case("out-of-range value in the file", ("train", "gamma2.yaml")),
        # ---- override syntax and keys
        Case("override with empty key", ("train", t, "=3")),
        Case("override with empty path part", ("train", t, "agent..gamma=0.9")),
        Case("override of an unknown key", ("train", t, "agent.gama=0.9")),
        Case("override of an unknown section", ("train", t, "agnet.gamma=0.9")),
        Case("override value is unparsable YAML", ("train", t, "network.hidden_sizes=[16")),
        Case("override into a scalar as if a section", ("train", t, "seed.x=1")),
        # ---- types and ranges
        Case("agent.gamma=2", ("train", t, "agent.gamma=2")),
        Case("agent.gamma=-0.1", ("train", t, "agent.gamma=-0.1")),
        Case("agent.gamma=abc", ("train", t, "agent.gamma=abc")),
        Case("agent.gamma=.nan", ("train", t, "agent.gamma=.nan")),
        Case("total_steps=0", ("train", t, "total_steps=0")),
        Case("total_steps=-5", ("train", t, "total_steps=-5")),
        Case("total_steps=1.5", ("train", t, "total_steps=1.5")),
        Case("total_steps=true", ("train", t, "total_steps=true")),
        Case("seed=-1", ("train", t, "seed=-1")),
        Case("optimizer.lr=-1", ("train", t, "optimizer.lr=-1")),
        Case("optimizer.lr=0", ("train", t, "optimizer.lr=0")),
        Case("optimizer.lr=.inf", ("train", t, "optimizer.lr=.inf")),
        Case("agent.batch_size=0", ("train", t, "agent.batch_size=0")),
        Case("agent.buffer_size=0", ("train", t, "agent.buffer_size=0")),
        Case("agent.eps_start=1.5", ("train", t, "agent.eps_start=1.5")),
        Case("agent.target_update_every=0", ("train", t, "agent.target_update_every=0")),
        Case("agent.learning_starts=-1", ("train", t, "agent.learning_starts=-1")),
        Case("env.num_envs=0", ("train", t, "env.num_envs=0")),
        Case("network.hidden_sizes=[0]", ("train", t, "network.hidden_sizes=[0]")),
        Case("metrics.probe_size=0", ("train", t, "metrics.probe_size=0")),
        Case("eval.epsilon=2", ("train", t, "eval.epsilon=2")),
        Case("logging.every=0", ("train", t, "logging.every=0")),
        Case("checkpoint.every=-1", ("train", t, "checkpoint.every=-1")),
        Case("ppo agent.clip_coef=-0.2", ("train", "tiny_ppo.yaml", "agent.clip_coef=-0.2")),
        Case("ppo agent.gae_lambda=1.5", ("train", "tiny_ppo.yaml", "agent.gae_lambda=1.5")),
        Case("ppo agent.num_minibatches=0", ("train", "tiny_ppo.yaml", "agent.num_minibatches=0")),
        Case(
            "replay_ratio=0 blamed, not learning_starts",
            ("train", t, "agent.replay_ratio=0", "agent.learning_starts=200"),
        ),
        Case("device=tpu", ("train", t, "device=tpu")),
        Case("device=cuda without CUDA", ("train", t, "device=cuda")),
        Case("env.kwargs=3", ("train", t, "env.kwargs=3")),
        # ---- names and module:attr
        Case("unknown agent.name", ("train", t, "agent.name=sac")),
        Case("unknown optimizer.name", ("train", t, "optimizer.name=adamx")),
        Case("unknown network.name", ("train", t, "network.name=resnet9000")),
        Case("unknown env.id", ("train", t, "env.id=NoSuchEnv-v0")),
        Case("env.id module:attr not an env", ("train", t, "env.id=badparts:NOT_CALLABLE")),
        Case("env.id module:attr missing module", ("train", t, "env.id=nosuchmodule:Env")),
        Case("env.id module:attr missing attr", ("train", t, "env.id=badparts:Nothing")),
        Case("network module:attr not callable", ("train", t, "network.name=badparts:NOT_CALLABLE")),
        Case("network module:attr wrong signature", ("train", t, "network.name=badparts:no_args_network")),
        Case("optimizer module:attr not callable", ("train", t, "optimizer.name=badparts:NOT_CALLABLE")),
        Case(
            "optimizer module:attr wrong signature",
            ("train", t, "optimizer.name=badparts:two_args_optimizer"),
        ),
        Case("callback module:attr not callable", ("train", t, "callbacks=[badparts:NOT_CALLABLE]")),
        Case("callback module missing", ("train", t, "callbacks=[nosuchmodule:cb]")),
        Case(
            "callback factory of the wrong signature",
            ("train", t, "callbacks=[badparts:callback_needing_args]"),
        ),
        Case(
            "wrapper class of the wrong signature",
            ("train", t, "env.wrappers=[{name: badparts:NotAWrapper}]"),
        ),
        Case("wrapper kwargs it does not take", ("train", t, "env.wrappers=[{name: ClipReward, lo: 1}]")),
        Case("wrapper module:attr not a class", ("train", t, "env.wrappers=[{name: badparts:NOT_CALLABLE}]")),
        Case("unknown wrapper name", ("train", t, "env.wrappers=[{name: NoSuchWrapper}]")),
        Case("regularizer without coef", ("train", t, "regularizers=[{name: spectral}]")),
        Case("unknown regularizer", ("train", t, "regularizers=[{name: nope, coef: 1}]")),
        Case("intervention option out of range", ("train", t, "interventions=[{name: redo, tau: -1}]")),
        Case("unknown intervention option", ("train", t, "interventions=[{name: redo, taux: 1}]")),
        # ---- keys that need another key
        Case("nonstationary.every without kind", ("train", t, "nonstationary.every=1000")),
        Case("nonstationary.on without kind", ("train", t, "nonstationary.on=step")),
        Case("unknown nonstationary.kind", ("train", t, "nonstationary.kind=shuffle_everything")),
        Case(
            "nonstationary.on=sometimes",
            (
                "train",
                t,
                "nonstationary.kind=permute_obs",
                "nonstationary.every=100",
                "nonstationary.on=sometimes",
            ),
        ),
        Case(
            "optimizer key of another optimizer", ("train", t, "optimizer.name=adam", "optimizer.iso_coef=1")
        ),
        Case("reset_on_task_switch without kind", ("train", t, "optimizer.reset_on_task_switch=true")),
        # ---- envs that break their declared space
        Case("env observation dtype differs from its space", ("train", t, "env.id=badparts:WrongDtypeEnv")),
        Case("env observation shape differs from its space", ("train", t, "env.id=badparts:WrongShapeEnv")),
        Case("env step() observation shape differs", ("train", t, "env.id=badparts:StepShapeEnv")),
        # ---- run names
        Case("logging.name=../escape", ("train", t, "logging.name=../escape")),
        Case("logging.name=/abs/path", ("train", t, "logging.name=/tmp/plasticrl_abs_escape")),
        Case("logging.name=a/../../b", ("train", t, "logging.name=a/../../b")),
        Case("logging.name empty", ("train", t, "logging.name=''")),
        Case("logging.name=.", ("train", t, "logging.name=.")),
        Case("logging.name of an existing run", ("train", t, "logging.name=done")),
        # ---- resume
        Case("--resume of a missing folder", ("train", "--resume", "runs/nope")),
        Case("--resume of a folder without checkpoint", ("train", "--resume", "runs/empty_run")),
        Case("--resume of a corrupted checkpoint", ("train", "--resume", "runs/corrupt")),
        Case("--resume of a truncated checkpoint", ("train", "--resume", "runs/truncated")),
        Case("--resume of a foreign torch file", ("train", "--resume", "runs/foreign")),
        Case("--resume of a non-dict pickle", ("train", "--resume", "runs/nondict")),
        Case("--resume changing a fixed key", ("train", "--resume", "runs/done", "agent.gamma=0.5")),
        Case("--resume of a complete run", ("train", "--resume", "runs/done")),
        Case("--resume with total_steps below done", ("train", "--resume", "runs/done", "total_steps=100")),
        Case("--resume with bad total_steps type", ("train", "--resume", "runs/done", "total_steps=abc")),
        Case("CONFIG and --resume together", ("train", t, "--resume", "runs/done")),
        Case("no CONFIG, no --resume", ("train",)),
        Case("unknown flag", ("train", t, "--bogus")),
        Case("no command", ()),
        Case("unknown command", ("trian", t)),
        # ---- other commands
        Case("eval of a missing folder", ("eval", "runs/nope")),
        Case("eval --episodes 0", ("eval", "runs/done", "--episodes", "0")),
        Case("sweep file missing", ("sweep", "nosweep.yaml")),
        Case("sweep file empty", ("sweep", "empty.yaml")),
        Case("sweep path is a directory", ("sweep", "adir")),
        Case("sweep --workers 0", ("sweep", "sweep_ok.yaml", "--workers", "0")),
        Case("sweep name escaping its dir", ("sweep", "sweep_escape.yaml", "--dry-run")),
        Case("plot of a missing folder", ("plot", "runs/nope")),
        Case("report without runs", ("report", "runs/nope", "--out", "rep")),
        Case("config of an unknown key", ("config", t, "agent.gama=1")),
        # ---- faults during a run (not bad input: their own rule)
        Case(
            "env raises inside step (keeps traceback)",
            ("train", t, "env.id=badparts:StepBugEnv", "total_steps=400", "logging.name=stepbug"),
            expect=1,
        ),
    ]
    return cases


def _setup(root: Path, command: list[str]) -> None:
    """Write the files the cases use into ``root`` and train the tiny run ``runs/done``."""
    (root / "badparts.py").write_text(BADPARTS)
    (root / "tiny.yaml").write_text(TINY_YAML)
    (root / "tiny_ppo.yaml").write_text(TINY_PPO_YAML)
    (root / "adir").mkdir()
    (root / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (root / "empty.yaml").write_text("")
    (root / "comments.yaml").write_text("# nothing here\n# at all\n")
    (root / "malformed.yaml").write_text("agent:\n  gamma: 0.9\n lr: 3\n")
    (root / "unclosed.yaml").write_text("network:\n  hidden_sizes: [16, 16\n")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "scalar.yaml").write_text("42\n")
    (root / "latin1.yaml").write_bytes("seed: 0\n# caf\xe9\n".encode("latin-1"))
    (root / "unknown_key.yaml").write_text("agent:\n  gama: 0.9\n")
    (root / "wrong_type.yaml").write_text("total_steps: lots\n")
    (root / "loop_a.yaml").write_text("base: loop_b.yaml\nseed: 1\n")
    (root / "loop_b.yaml").write_text("base: loop_a.yaml\nseed: 2\n")
    (root / "base_missing.yaml").write_text("base: nowhere.yaml\n")
    (root / "gamma2.yaml").write_text("agent:\n  gamma: 2\n")
    (root / "sweep_escape.yaml").write_text("name: ../escaped\nbase: tiny.yaml\nseeds: [0]\n")
    (root / "sweep_ok.yaml").write_text("base: tiny.yaml\nseeds: [0]\n")
    runs = root / "runs"
    subprocess.run(
        [*command, "train", "tiny.yaml", "logging.name=done"],
        cwd=root,
        check=True,
        capture_output=True,
    )
    (runs / "empty_run").mkdir()
    checkpoint = (runs / "done" / "checkpoint.pt").read_bytes()
    for name, data in {
        "corrupt": bytes(range(256)) * 64,
        "truncated": checkpoint[: len(checkpoint) // 2],
    }.items():
        (runs / name).mkdir()
        (runs / name / "checkpoint.pt").write_bytes(data)
    import torch

    for name, obj in {"foreign": {"state_dict": {"w": torch.zeros(2)}}, "nondict": [1, 2, 3]}.items():
        (runs / name).mkdir()
        torch.save(obj, runs / name / "checkpoint.pt")


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if "__pycache__" not in p.parts}


def run_case(case: Case, root: Path, command: list[str], timeout: float) -> tuple[int | str, str, bool]:
    """(exit code or 'timeout', the stderr shown, whether the case met its rule)."""
    before = _listing(root)
    argv = list(case.argv)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PLASTICRL_DEBUG", None)
    try:
        proc = subprocess.run(
            [*command, *argv], cwd=root, capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        return "timeout", "(still running: the input was accepted)", False
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    written = sorted(_listing(root) - before)
    if case.expect == 2:
        ok = proc.returncode == 2 and len(lines) == 1 and not written
        shown = lines[0] if len(lines) == 1 else " / ".join(lines[-3:]) if lines else "(no stderr)"
        if written:
            shown += f"  [wrote: {', '.join(written[:3])}]"
    else:
        ok = proc.returncode == case.expect and "Traceback" in proc.stderr and "is intact" in proc.stderr
        notes = [line for line in lines if line.startswith("plasticrl:")]
        shown = (lines[-2] if len(lines) > 1 else "") + " | " + (notes[-1] if notes else "(no note)")
    return proc.returncode, shown, ok


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main() -> int:
    """Run every case (or those matching ``--only``) and print the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the cases whose label contains this")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds before a case counts as accepted"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()
    exe = shutil.which("plasticrl")
    command = [exe] if exe else [sys.executable, "-m", "plasticrl.trainers.cli"]
    root = Path(tempfile.mkdtemp(prefix="plasticrl_bad_inputs_"))
    start = time.perf_counter()
    try:
        _setup(root, command)
        cases = [c for c in _cases() if args.only is None or args.only in c.label]
        print("| # | input | command | exit | stderr (one line) | ok |")
        print("|---|---|---|---|---|---|")
        passed = 0
        for i, case in enumerate(cases, 1):
            code, shown, ok = run_case(case, root, command, args.timeout)
            passed += ok
            argv = " ".join(case.argv)
            mark = "yes" if ok else "NO"
            print(f"| {i} | {_cell(case.label)} | `{_cell(argv)}` | {code} | {_cell(shown)} | {mark} |")
            sys.stdout.flush()
        print(f"\n{passed} of {len(cases)} cases met their rule ({time.perf_counter() - start:.0f} s)")
        return 0 if passed == len(cases) else 1
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
