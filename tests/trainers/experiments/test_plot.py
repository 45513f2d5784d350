"""``plasticrl plot`` (trainers/plot.py): pure helpers by hand values, figures of synthetic event files, CLI.

The runs here are TensorBoard event files written directly with ``SummaryWriter`` (no training):
returns, task ids changing at known steps, dormant fractions for two τ (plus per-layer tags that
must not become subplots). Figures are checked through the matplotlib ``Figure`` objects that
``plot_runs`` saves (subplot titles, boundary lines, legend) and through the PNG files.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from plasticrl.trainers.cli import main
from plasticrl.trainers.experiments.plot import (
    DEFAULT_TAGS,
    mean_band,
    moving_average,
    plot_runs,
    read_scalars,
    run_labels,
    task_boundaries,
)
from torch.utils.tensorboard import SummaryWriter

Points = Sequence[tuple[int, float]]

RUN_A = "CartPole-v1__dqn__adam__mlp__s0__20250101-120000"
RUN_B = "CartPole-v1__dqn__adam__mlp__s1__20250101-120007"
A_BOUNDARIES = [300, 600]  # task 0 → 1 at step 300, 1 → 2 at step 600
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(path: Path, scalars: Mapping[str, Points]) -> Path:
    """A run folder whose event file holds ``scalars`` (tag → [(step, value)]), written in step order."""
    path.mkdir(parents=True)
    writer = SummaryWriter(str(path))
    events = sorted((step, tag, value) for tag, points in scalars.items() for step, value in points)
    for step, tag, value in events:
        writer.add_scalar(tag, value, step)
    writer.close()
    return path


def returns(n: int, every: int, offset: float = 0.0) -> list[tuple[int, float]]:
    return [(every * (i + 1), float(i % 7) + offset) for i in range(n)]


def task_ids_of_run_a() -> list[tuple[int, float]]:
    """Episode-end task ids every 50 steps plus the trainer's cadence points at 100, 200, ...

    At a change step the finished episode's (old) task is logged first, then the current (new) task.
    """
    points = []
    for step in range(50, 901, 50):
        task = sum(step > b for b in A_BOUNDARIES)
        points.append((step, float(task)))
        if step in A_BOUNDARIES:
            points.append((step, float(task + 1)))
    return points


def run_a_scalars() -> dict[str, Points]:
    dormant = {
        "plasticity/dormant_fraction/tau_0.1": [(s, 0.3) for s in range(100, 901, 100)],
        "plasticity/dormant_fraction/tau_0": [(s, 0.1 + s / 10_000) for s in range(100, 901, 100)],
        "plasticity/dormant_fraction/tau_0/2": [(s, 0.2) for s in range(100, 901, 100)],
        "plasticity/dormant_fraction/tau_0.1/4": [(s, 0.4) for s in range(100, 901, 100)],
    }
    return {"charts/episodic_return": returns(40, 22), "env/task_id": task_ids_of_run_a(), **dormant}


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    a = write_run(tmp_path / "runs" / RUN_A, run_a_scalars())
    b = write_run(tmp_path / "runs" / RUN_B, {"charts/episodic_return": returns(30, 30, offset=2.0)})
    return a, b


@pytest.fixture
def saved_figures(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Figure]]:
    """Every Figure that ``plot_runs`` saves, by file name (the real ``savefig`` still runs)."""
    figures: dict[str, Figure] = {}
    original = Figure.savefig

    def spy(self: Figure, fname: str | Path, *args: object, **kwargs: object) -> None:
        figures[Path(fname).name] = self
        original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    yield figures


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def visible_axes(fig: Figure) -> list[object]:
    return [ax for ax in fig.axes if ax.get_visible()]


def boundary_lines(ax: object) -> list[tuple[float, tuple[float, ...], float | None]]:
    """(x, rgba, alpha) of the dashed vertical lines of one subplot."""
    lines = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    for line in lines:
        assert line.get_xdata()[0] == line.get_xdata()[1]  # vertical
    return sorted((float(line.get_xdata()[0]), to_rgba(line.get_color()), line.get_alpha()) for line in lines)


def data_lines(ax: object) -> list[object]:
    return [line for line in ax.get_lines() if line.get_linestyle() == "-"]


# ----------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("steps", "ids", "expected"),
    [
        ([], [], []),
        ([5], [3.0], []),
        ([0, 10, 20, 30], [0, 0, 0, 0], []),
        ([0, 10, 20, 30, 40], [0, 0, 1, 1, 2], [20, 40]),
        ([0, 10, 20, 30], [0, 1, 0, 1], [10, 20, 30]),  # cycling back is a change too
        ([100, 100, 150], [0, 1, 1], [100]),  # old task's episode, then the new task, same step
        ([7, 7, 7], [0, 1, 2], [7]),  # two changes at one step: the step once
        ([30, 10, 20, 0], [2, 0, 1, 0], [20, 30]),  # unsorted input is taken in step order
        ([0, 10, 20, 30], [0, math.nan, 1, 1], [20]),  # a non-finite id is skipped
        ([0, 1000, 2000], [4.0, 0.0, 1.0], [1000, 2000]),
    ],
)
def test_task_boundaries_hand_values(steps: list[int], ids: list[float], expected: list[int]) -> None:
    assert task_boundaries(steps, ids) == expected


def test_task_boundaries_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length: 2 != 1"):
        task_boundaries([0, 1], [0.0])


def test_moving_average_hand_values() -> None:
    assert moving_average([], 3) == []
    assert moving_average([2.0, 4.0, 6.0], 1) == [2.0, 4.0, 6.0]
    assert moving_average([1.0, 2.0, 3.0, 4.0, 5.0], 3) == [1.0, 1.5, 2.0, 3.0, 4.0]
    assert moving_average([1.0, 2.0], 10) == [1.0, 1.5]
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        moving_average([1.0], 0)


def test_mean_band_geometric_draws_the_mean_log_and_leaves_out_non_positive_values() -> None:
    """Seeds (1, 100) mean 10 geometrically (50.5 arithmetically); a 0 or −1 is left out."""
    import numpy as np

    curves = np.array([[1.0, 4.0, 0.0], [100.0, 16.0, 9.0], [np.nan, -1.0, 1.0]])
    fig = Figure()
    ax = fig.add_subplot()
    mean_band(ax, np.arange(3), curves, "C0", "geo", seed=0, geometric=True)
    mean_band(ax, np.arange(2), curves[:2, :2], "C1", "arith", seed=0)
    geo, arith = (line.get_ydata() for line in ax.get_lines())
    np.testing.assert_allclose(geo, [10.0, 8.0, 3.0])
    np.testing.assert_allclose(arith, [50.5, 10.0])
    band = ax.collections[0].get_paths()[0].vertices[:, 1]  # the CI: inside the data's range
    assert band.min() >= 1.0 - 1e-9 and band.max() <= 100.0 + 1e-9


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ([RUN_A, RUN_B], ["s0", "s1"]),
        (["only_one_run"], ["only_one_run"]),
        (["breakout_adam_s0", "breakout_sgd_s0"], ["adam", "sgd"]),
        (["a__x__20250101-000000", "a__x__20250101-000000_1"], ["20250101-000000", "20250101-000000_1"]),
        (["adamo_lr1e-3_s0", "adamo_lr3e-4_s0"], ["lr1e-3", "lr3e-4"]),
        (["same", "same"], ["same", "same"]),
        (["prefix", "prefix_long"], ["prefix", "prefix_long"]),
    ],
)
def test_run_labels_drop_what_runs_share(names: list[str], expected: list[str]) -> None:
    assert run_labels(names) == expected


# ----------------------------------------------------------------------------- reading


def test_read_scalars_keeps_every_point(tmp_path: Path) -> None:
    # TensorBoard's default reservoir keeps 10 000 scalars per tag and drops the rest at random.
    points = [(i, float(i % 13)) for i in range(10_050)]
    run = write_run(tmp_path / "long", {"charts/episodic_return": points, "env/task_id": [(5, 1.0)]})
    scalars = read_scalars(run)
    assert set(scalars) == {"charts/episodic_return", "env/task_id"}
    steps, values = scalars["charts/episodic_return"]
    assert steps == list(range(10_050))
    assert values == [v for _, v in points]
    assert scalars["env/task_id"] == ([5], [1.0])


def test_missing_event_files_raise_naming_the_folder(tmp_path: Path, two_runs: tuple[Path, Path]) -> None:
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "config.yaml").write_text("seed: 0\n")
    out = tmp_path / "out"
    with pytest.raises(
        ValueError, match=r"no TensorBoard event files \(events\.out\.tfevents\.\*\) in .*empty_run"
    ):
        plot_runs([two_runs[0], empty], out)
    assert not out.exists()  # every folder is checked before any figure is written
    with pytest.raises(ValueError, match="run folder .*missing_run.* not found"):
        plot_runs([tmp_path / "missing_run"], out)
    with pytest.raises(ValueError, match="at least one run folder"):
        plot_runs([], out)
    # the parent folder of runs is not a run: the message says to pass the runs
    with pytest.raises(ValueError, match=r"in '.*runs'; its subfolders hold runs: pass them \(.*runs/\*\)"):
        plot_runs([two_runs[0].parent], out)


# ----------------------------------------------------------------------------- figures


def test_plot_runs_writes_returns_and_dormant_figures(
    tmp_path: Path, two_runs: tuple[Path, Path], saved_figures: dict[str, Figure]
) -> None:
    out = tmp_path / "out"
    written = plot_runs(two_runs, out, window=5)
    names = ["episodic_return.png", "episodic_return.pdf", "dormant_fraction.png", "dormant_fraction.pdf"]
    assert written == [out / n for n in names]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert all(p.read_bytes()[:5] == b"%PDF-" for p in written if p.suffix == ".pdf")
    # no srank / isometry tags in either run: no such figure
    assert not (out / "srank.png").exists() and not (out / "isometry_gap.png").exists()
    # one panel plus the task strip: 5 × (3.4 + 0.8 + 1.2) in at 100 dpi
    assert png_size(out / "episodic_return.png") == (500, 540)
    assert png_size(out / "dormant_fraction.png") == (1000, 420)  # two subplots side by side

    returns_fig = saved_figures["episodic_return.png"]
    ax, strip = visible_axes(returns_fig)
    assert returns_fig.get_suptitle().startswith(
        "Episodic return\nfaint: every episode; line: mean of the last 5"
    )
    assert (
        ax.get_ylabel() == "return per episode (sum of rewards)" and strip.get_xlabel() == "environment steps"
    )
    assert [t.get_text() for t in returns_fig.legends[0].get_texts()] == ["s0", "s1", "task switch"]
    # the task id of run A as a step function, held to its last step; run B logs none
    (task_line,) = strip.get_lines()
    assert task_line.get_drawstyle() == "steps-post" and strip.get_ylabel() == "task id"
    xs, ys = list(task_line.get_xdata()), list(task_line.get_ydata())
    assert xs[0] == 0 and xs[-1] == 900 and ys[0] == 0.0 and ys[-1] == 2.0
    assert [x for x, y0, y1 in zip(xs[1:], ys, ys[1:], strict=False) if y1 != y0] == A_BOUNDARIES
    raw_a, smooth_a, raw_b, smooth_b = data_lines(ax)
    colour_a, colour_b = to_rgba(smooth_a.get_color()), to_rgba(smooth_b.get_color())
    assert colour_a != colour_b
    values_a = [v for _, v in returns(40, 22)]
    assert list(raw_a.get_ydata()) == values_a
    assert list(smooth_a.get_ydata()) == pytest.approx(moving_average(values_a, 5))
    assert list(raw_b.get_xdata()) == [s for s, _ in returns(30, 30)]
    assert raw_a.get_alpha() < 1.0 and smooth_a.get_alpha() is None  # raw points faint
    # run A's task changes, in run A's colour; run B logs no task id
    assert boundary_lines(ax) == [(300.0, colour_a, 0.4), (600.0, colour_a, 0.4)]

    dormant_fig = saved_figures["dormant_fraction.png"]
    axes = visible_axes(dormant_fig)
    # totals only (per-layer tags are not subplots), τ in numeric order; only run A has them
    assert [a.get_title() for a in axes] == ["Dormant units, τ = 0", "Dormant units, τ = 0.1"]
    assert {a.get_ylabel() for a in axes} == {"fraction of units dormant"}
    assert [t.get_text() for t in dormant_fig.legends[0].get_texts()] == ["s0", "task switch"]
    for a in axes:
        (line,) = data_lines(a)
        assert list(line.get_xdata()) == list(range(100, 901, 100))
        assert [x for x, _, _ in boundary_lines(a)] == [float(s) for s in A_BOUNDARIES]
    assert list(data_lines(axes[0])[0].get_ydata()) == pytest.approx(
        [0.1 + s / 10_000 for s in range(100, 901, 100)]
    )


def test_srank_and_isometry_figures_only_when_logged(
    tmp_path: Path, saved_figures: dict[str, Figure]
) -> None:
    layers = ["1", "3", "5", "10"]
    metrics = {f"plasticity/isometry_gap/{layer}": [(100, 1.0), (200, 2.0)] for layer in layers}
    metrics |= {
        "plasticity/srank": [(100, 20.0), (200, 18.0)],
        "plasticity/effective_rank": [(100, 25.0)],  # not a figure by default
        "env/task_id": [(50, 0.0), (150, 1.0)],
    }
    run = write_run(tmp_path / "metrics_only", metrics)
    out = tmp_path / "figs"
    written = plot_runs([run], out)
    # no returns, no dormancy
    assert [p.name for p in written] == ["srank.png", "srank.pdf", "isometry_gap.png", "isometry_gap.pdf"]
    assert all(
        p.stat().st_size > 0 and p.read_bytes()[:8] == PNG_MAGIC for p in written if p.suffix == ".png"
    )
    iso = visible_axes(saved_figures["isometry_gap.png"])
    assert [a.get_title() for a in iso] == [f"Isometry gap, layer {layer}" for layer in layers]
    assert len(saved_figures["isometry_gap.png"].axes) == 6  # a 2 × 3 grid, two cells hidden
    assert png_size(out / "isometry_gap.png") == (1500, 760)
    srank_panel, _strip = visible_axes(saved_figures["srank.png"])
    for a in [*iso, srank_panel]:
        assert [x for x, _, _ in boundary_lines(a)] == [150.0]
    legend = saved_figures["srank.png"].legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["metrics_only", "task switch"]


def test_custom_tags_skip_non_finite_values(tmp_path: Path, saved_figures: dict[str, Figure]) -> None:
    ntk = [(100, 5.0), (200, math.inf), (300, 7.0)]
    run = write_run(tmp_path / "ntk", {"plasticity/ntk_condition_number": ntk})
    written = plot_runs([run], tmp_path, tags={"ntk": r"plasticity/ntk_.*", "none": r"charts/nothing"})
    assert written == [tmp_path / "ntk.png", tmp_path / "ntk.pdf"]
    (line,) = data_lines(visible_axes(saved_figures["ntk.png"])[0])
    assert list(line.get_xdata()) == [100, 300] and list(line.get_ydata()) == [5.0, 7.0]
    with pytest.raises(ValueError, match="figure 'bad': bad tag pattern"):
        plot_runs([run], tmp_path, tags={"bad": "plasticity/("})
    with pytest.raises(ValueError, match="window must be >= 1"):
        plot_runs([run], tmp_path, window=0)


def test_same_folder_names_get_their_parent(tmp_path: Path, saved_figures: dict[str, Figure]) -> None:
    a = write_run(tmp_path / "adam" / "s0", {"charts/episodic_return": returns(5, 10)})
    b = write_run(tmp_path / "sgd" / "s0", {"charts/episodic_return": returns(5, 10)})
    plot_runs([a, b], tmp_path / "out")
    legend = saved_figures["episodic_return.png"].legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["adam/s0", "sgd/s0"]


# ----------------------------------------------------------------------------- command line


def test_cli_plot_several_runs(
    tmp_path: Path,
    two_runs: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "cmp"
    assert main(["plot", str(two_runs[0]), str(two_runs[1]), "--out", str(out), "--window", "3"]) == 0
    expected = [out / f"{n}.{e}" for n in ("episodic_return", "dormant_fraction") for e in ("png", "pdf")]
    assert capsys.readouterr().out.splitlines() == [str(p) for p in expected]
    assert all(p.is_file() and p.stat().st_size > 0 for p in expected)
    # default output: plots/ (relative to the working folder) for several runs
    monkeypatch.chdir(tmp_path)
    assert main(["plot", str(two_runs[0]), str(two_runs[1])]) == 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in expected)


def test_cli_plot_one_run_writes_into_it(
    two_runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run = two_runs[1]
    assert main(["plot", str(run)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        str(run / "episodic_return.png"),
        str(run / "episodic_return.pdf"),
    ]
    assert (run / "episodic_return.png").read_bytes()[:8] == PNG_MAGIC


def test_cli_plot_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "no_events"
    empty.mkdir()
    assert main(["plot", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("plasticrl: error: no TensorBoard event files") and "no_events" in err
    assert "\n" not in err
    only_task = write_run(tmp_path / "task_only", {"env/task_id": [(10, 0.0)]})
    assert main(["plot", str(only_task)]) == 2
    err = capsys.readouterr().err
    assert "nothing to plot" in err and DEFAULT_TAGS["episodic_return"] in err
    assert not list(only_task.glob("*.png"))
    with pytest.raises(SystemExit) as exc:
        main(["plot"])  # RUN_DIR is required: an argparse usage error
    assert exc.value.code == 2
