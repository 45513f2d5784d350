"""The ``plasticrl`` command line.

Commands:
    plasticrl train CONFIG [key=value ...] [--quiet]
    plasticrl train --resume RUN_DIR [total_steps=N ...] [--quiet]
    plasticrl list                      registered agents, networks, optimizers, regularizers,
                                        interventions, envs
    plasticrl config [CONFIG] [key=value ...]   every key with its value and meaning
    plasticrl plot RUN_DIR [RUN_DIR ...] [--out DIR]   PNGs of returns and plasticity curves
    plasticrl sweep SWEEP.yaml [--workers N] [--dry-run]   base config x grid x seeds, in parallel
    plasticrl report RUN_DIR [RUN_DIR ...] --out DIR   aggregate runs (never pooling different configs)
    plasticrl compare RUN_DIR [RUN_DIR ...] --out DIR  arms of a game sequence: per-game IQM,
                                        P(improvement), mechanisms per task
    plasticrl eval RUN_DIR [--episodes N] [--policy greedy|sample] [--video [--out DIR]]
                                        play a trained policy (mean return, videos)

Bad input (missing file, bad override, unknown name) prints one line on stderr and exits with 2,
never a traceback (set PLASTICRL_DEBUG=1 for one). Ctrl-C during training writes a checkpoint
and exits with 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from collections.abc import Sequence

import gymnasium as gym
from plasticrl.trainers.evaluation import run_eval_command
from plasticrl.trainers.experiments.comparison import add_compare_parser, run_compare_command
from plasticrl.trainers.experiments.plot import DEFAULT_TAGS, run_plot_command
from plasticrl.trainers.experiments.report import run_report_command
from plasticrl.trainers.experiments.sweep import EXIT_TAKEN, run_sweep_command
from plasticrl.trainers.runlock import RunFolderInUse

__all__ = ["main", "build_parser"]

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_NONFINITE = 3


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit 2), like every other bad input."""

    def error(self, message: str) -> typing.NoReturn:
        """Print ``<prog>: error: <message> (usage: ...; see <prog> --help)`` on one line and exit with 2."""
        usage = " ".join(self.format_usage().split())
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} ({usage}; see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of ``plasticrl``."""
    parser = _Parser(
        prog="plasticrl",
        description="Continual RL for studying and fighting loss of plasticity.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train an agent from a YAML config",
        description="Train from CONFIG with dotted key=value overrides, or continue a run with --resume.",
        epilog="examples:\n"
        "  plasticrl train configs/cartpole/dqn.yaml seed=3 optimizer.lr=3e-4\n"
        "  plasticrl train --resume runs/<run> total_steps=2000000\n"
        "keys: plasticrl config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("config", nargs="?", help="YAML preset (omit with --resume)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress line")

    sub.add_parser(
        "list",
        help="list registered agents, networks, optimizers, regularizers, interventions and envs",
        description="List every registered name a config can use.",
    )

    config = sub.add_parser(
        "config",
        help="show every config key with its value and meaning",
        description="Print the resolved config (defaults, or CONFIG with overrides).",
    )
    config.add_argument("config", nargs="?", help="YAML preset")
    config.add_argument("overrides", nargs="*", metavar="key=value")
    subparsers: typing.Any = sub  # (of _Parser, which the subcommands' builders take as ArgumentParser)
    _add_plot_parser(subparsers)
    _add_sweep_parser(subparsers)
    _add_report_parser(subparsers)
    add_compare_parser(subparsers)
    _add_eval_parser(subparsers)
    return parser


def _add_eval_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``eval RUN_DIR [--episodes N] [--policy P] [--video [--out DIR]]`` to the subparsers."""
    parser = subparsers.add_parser(
        "eval",
        help="play a trained run's policy: mean return, optionally videos",
        description="Load RUN_DIR's last checkpoint and play episodes with its greedy policy\n"
        "(--policy sample: as it explored); --video records each with gymnasium's RecordVideo.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--episodes", type=int, default=10, metavar="N", help="episodes to play (10)")
    parser.add_argument(
        "--policy",
        choices=("greedy", "sample"),
        default="greedy",
        help="greedy (default), or sample: PPO draws from its policy, DQN is epsilon-greedy",
    )
    parser.add_argument("--seed", type=int, default=0, help="reset seed of the first episode (0)")
    parser.add_argument("--video", action="store_true", help="record every episode as an mp4")
    parser.add_argument("--out", metavar="DIR", help="video folder (default RUN_DIR/videos)")
    return parser


def _add_plot_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``plot RUN_DIR [RUN_DIR ...] [--out DIR] [--window N]`` to ``plasticrl``'s subparsers."""
    parser = subparsers.add_parser(
        "plot",
        help="plot returns and plasticity metrics of one or more runs as PNGs",
        description="Read the TensorBoard event files of each RUN_DIR and write\n"
        f"{', '.join(f'{n}.png' for n in DEFAULT_TAGS)}\n"
        "(those with data), runs overlaid, task boundaries dashed.",
        epilog="examples:\n"
        "  plasticrl plot runs/<run>                 PNGs into runs/<run>\n"
        "  plasticrl plot runs/a runs/b --out cmp    overlay two runs into cmp/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders with event files")
    parser.add_argument(
        "--out", metavar="DIR", help="output folder (default: the run folder, or plots/ for several runs)"
    )
    parser.add_argument(
        "--window", type=int, default=20, metavar="N", help="episodes in the return moving average (20)"
    )
    return parser


def _add_sweep_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``sweep SWEEP.yaml [key=value ...] [--seeds S] [--name N] [--workers N] [--dry-run]``.

    ``--backend ray [--address ADDR]`` runs each run as a Ray task
    (:mod:`plasticrl.trainers.experiments.sweep_ray`).
    """
    parser = subparsers.add_parser(
        "sweep",
        help="run a sweep (base config x grid x seeds) in parallel processes",
        description="Run every run of SWEEP.yaml (base or methods, seeds, overrides, grid, name, dir),\n"
        "skipping complete runs and resuming interrupted ones; each run logs to <run_dir>.log.\n"
        "key=value overrides after the file apply to every run, after the file's own overrides.",
        epilog="examples:\n"
        "  plasticrl sweep configs/sweeps/cartpole_seeds.yaml --dry-run\n"
        "  plasticrl sweep configs/sweeps/cartpole_seeds.yaml --workers 2\n"
        "  plasticrl sweep configs/studies/permuted_breakout.yaml --seeds 0,1 total_steps=100000\n"
        "  plasticrl sweep configs/studies/permuted_breakout.yaml --backend ray --address auto",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep", metavar="SWEEP.yaml", help="the sweep file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every run")
    parser.add_argument("--seeds", metavar="S,S,...", help="these seeds instead of the file's (e.g. 0,1,2)")
    parser.add_argument("--name", help="the sweep's folder name instead of the file's (keep variants apart)")
    parser.add_argument(
        "--dir", metavar="DIR", help="the folder the sweep's folder goes in, instead of the file's 'dir'"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="runs at once, one process each (default: the number of CPU cores)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print each run and its action; run nothing")
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: child processes on this machine (default); ray: one Ray task per run, on a Ray "
        "cluster sharing this filesystem (needs pip install -e '.[ray]')",
    )
    parser.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="--backend ray: the cluster ('auto', 'host:port' or 'ray://host:port'); "
        "default: start a local Ray instance",
    )
    return parser


def _add_report_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``report RUN_DIR... --out DIR [options]`` to ``plasticrl``'s subparsers."""
    parser = subparsers.add_parser(
        "report",
        help="aggregate runs: learning curves with CIs, per-task scores, plasticity gap, IQM",
        description="Read the event files of every RUN_DIR, group runs by method (folder name\n"
        "without __s<seed>, or --group-by a config key), align them by task segment and write\n"
        "report.md, scores.csv and PNGs into --out; runs of different configs are never pooled.",
        epilog="examples:\n"
        "  plasticrl report runs/permuted_breakout/* --out docs/results/permuted_breakout\n"
        "  plasticrl report runs/a_* runs/b_* --out cmp --group-by optimizer.name",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (log files are skipped)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--group-by", metavar="KEY", help="group runs by this config key's value")
    parser.add_argument(
        "--pool-over",
        action="append",
        metavar="KEY",
        help="config key (or section) runs may differ on and still be seeds of one method (repeatable)",
    )
    parser.add_argument("--bin", type=int, metavar="STEPS", help="learning-curve bin (default total/100)")
    parser.add_argument(
        "--final-fraction", type=float, default=0.2, help="tail of a segment for final return"
    )
    parser.add_argument("--normalize", default="none", help="none | minmax (per task id, over all runs)")
    parser.add_argument("--reps", type=int, default=50_000, help="bootstrap replicates for IQM CIs (50000)")
    return parser


def _split_positionals(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """Argparse puts a leading ``key=value`` into ``config``; move it back to the overrides."""
    overrides = list(args.overrides)
    config = args.config
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)
        config = None
    return config, overrides


def _cmd_train(args: argparse.Namespace) -> int:
    from plasticrl.trainers.config import load_config
    from plasticrl.trainers.run import resume, train

    config, overrides = _split_positionals(args)
    if args.resume:
        if config is not None:
            raise ValueError("give either CONFIG or --resume RUN_DIR, not both")
        result = resume(args.resume, overrides, quiet=args.quiet)
    else:
        if config is None:
            raise ValueError(
                "missing CONFIG (a YAML preset, e.g. configs/cartpole/dqn.yaml) or --resume RUN_DIR"
            )
        from plasticrl.trainers.config import ConfigError, blame_source

        cfg = load_config(config, overrides)
        try:  # start-up checks (names, module:attr, the env's spaces) blame their file or override
            result = train(cfg, quiet=args.quiet)
        except ConfigError as exc:
            if getattr(exc, "plasticrl_run_error", False) or exc.key is None:
                raise
            raise ConfigError(f"{blame_source(exc.key, config, overrides)}: {exc}", key=exc.key) from None
    status = result.status
    print(f"{status}: {result.global_step} steps, {result.updates} updates -> {result.run_dir}")
    if status == "interrupted":
        print(f"resume with: plasticrl train --resume {result.run_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if status.startswith("stopped"):
        print(
            f"plasticrl: {status}; checkpoint.pt (if one was written) is untouched, "
            f"the state at the stop is in {result.run_dir}/nonfinite_stop.pt",
            file=sys.stderr,
        )
        return EXIT_NONFINITE
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from plasticrl.agents import AGENTS, NETWORKS
    from plasticrl.envs.changes import CHANGES
    from plasticrl.envs.make import ENV_ALIASES
    from plasticrl.envs.schedules import SCHEDULES
    from plasticrl.plasticity import OPTIMIZERS, REGULARIZERS
    from plasticrl.plasticity.interventions import INTERVENTIONS

    sections = {
        "agents": AGENTS.names(),
        "networks": NETWORKS.names(),
        "optimizers": OPTIMIZERS.names(),
        "regularizers": REGULARIZERS.names(),
        "interventions": INTERVENTIONS.names(),
        "change kinds (nonstationary.kind; a list of them composes)": CHANGES.names(),
        "schedules (nonstationary.every / at / random / geometric)": SCHEDULES.names(),
        "env aliases": [f"{k} -> {v}" for k, v in ENV_ALIASES.items()],
    }
    for title, names in sections.items():
        print(f"{title}:")
        for name in names:
            print(f"  {name}")
    print(
        "envs: any gymnasium id, an alias above, 'module:EnvId' (imports the module first, e.g. "
        "minigrid:MiniGrid-Empty-5x5-v0) or 'package.module:ClassOrFactory'; env.imports: [ale_py, "
        "minigrid] imports plugins; modules in the working directory are found"
    )
    print("env.wrappers: gymnasium.wrappers names, ClipTrainingReward, or 'module:Class', with kwargs")
    print("every name above also accepts 'package.module:attr'")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from plasticrl.trainers.config import describe_config, load_config

    config, overrides = _split_positionals(args)
    for key, value, doc in describe_config(load_config(config, overrides)):
        print(f"{key} = {value}" + (f"    # {doc}" if doc else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``plasticrl`` console script; returns the exit code."""
    parser = build_parser()
    # Flags may sit among the key=value overrides (``train c.yaml -q seed=3``): argparse stops
    # the positional list at the flag, so collect the overrides that come after it here.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    commands = {
        "train": _cmd_train,
        "list": _cmd_list,
        "config": _cmd_config,
        "plot": run_plot_command,
        "sweep": run_sweep_command,
        "report": run_report_command,
        "compare": run_compare_command,
        "eval": run_eval_command,
    }
    try:
        return commands[args.command](args)
    except RunFolderInUse as exc:  # another process trains there: a sweep reports the run as taken
        print(f"plasticrl: error: {exc}", file=sys.stderr)
        return EXIT_TAKEN
    except (ValueError, OSError, gym.error.Error) as exc:  # ConfigError is a ValueError
        if os.environ.get("PLASTICRL_DEBUG") or getattr(exc, "plasticrl_run_error", False):
            raise  # a run's own error (the env's, a hook's): its traceback, with the session's note
        print(f"plasticrl: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("plasticrl: aborted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
