"""The ``plasticrl`` command line.

Commands:
    plasticrl train CONFIG [key=value ...] [--quiet]
    plasticrl train --resume RUN_DIR [total_steps=N ...] [--quiet]
    plasticrl list                      registered agents, networks, optimizers, regularizers,
                                        interventions, envs
    plasticrl config [CONFIG] [key=value ...]   every key with its value and meaning
    plasticrl plot RUN_DIR [RUN_DIR ...] [--out DIR]   PNGs of returns and plasticity curves
    plasticrl sweep SWEEP.yaml [--workers N] [--dry-run]   base config x grid x seeds, in parallel

Bad input (missing file, bad override, unknown name) prints one line on stderr and exits with 2,
never a traceback (set PLASTICRL_DEBUG=1 for one). Ctrl-C during training writes a checkpoint
and exits with 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import gymnasium as gym

from trainers.plot import register_plot_command, run_plot_command
from trainers.report import register_report_command, run_report_command
from trainers.sweep import register_sweep_command, run_sweep_command

__all__ = ["main", "build_parser"]

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_NONFINITE = 3


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of ``plasticrl``."""
    parser = argparse.ArgumentParser(
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
    register_plot_command(sub)
    register_sweep_command(sub)
    register_report_command(sub)
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
    from trainers.config import load_config
    from trainers.run import resume, train

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
        result = train(load_config(config, overrides), quiet=args.quiet)
    status = result["status"]
    print(f"{status}: {result['global_step']} steps, {result['updates']} updates -> {result['run_dir']}")
    if status == "interrupted":
        print(f"resume with: plasticrl train --resume {result['run_dir']}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if status.startswith("stopped"):
        print(
            f"plasticrl: {status}; checkpoint.pt (if one was written) is untouched, "
            f"the state at the stop is in {result['run_dir']}/nonfinite_stop.pt",
            file=sys.stderr,
        )
        return EXIT_NONFINITE
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from agents import AGENTS, NETWORKS
    from envs.make import ENV_ALIASES
    from plasticity import OPTIMIZERS, REGULARIZERS
    from plasticity.interventions import INTERVENTIONS

    sections = {
        "agents": AGENTS.names(),
        "networks": NETWORKS.names(),
        "optimizers": OPTIMIZERS.names(),
        "regularizers": REGULARIZERS.names(),
        "interventions": INTERVENTIONS.names(),
        "env aliases": [f"{k} -> {v}" for k, v in ENV_ALIASES.items()],
    }
    for title, names in sections.items():
        print(f"{title}:")
        for name in names:
            print(f"  {name}")
    print("envs: any gymnasium id, an alias above, or 'package.module:ClassOrFactory'")
    print("every name above also accepts 'package.module:attr'")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from trainers.config import describe_config, load_config

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
    }
    try:
        return commands[args.command](args)
    except (ValueError, OSError, gym.error.Error) as exc:  # ConfigError is a ValueError
        if os.environ.get("PLASTICRL_DEBUG"):
            raise
        print(f"plasticrl: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("plasticrl: aborted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
