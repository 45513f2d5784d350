"""Figures fit for a paper: properties of every figure ``plasticrl plot`` and ``plasticrl report`` save.

Checked on the matplotlib ``Figure`` objects as saved (after drawing): every visible axis has an
x and a y label; no title is a raw tag; the legend lies inside the figure, even for long method
names; the colours are Okabe–Ito's; task switches have a legend entry; bands say over how many
seeds they are; every figure is written as PNG and as PDF.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from plasticrl.trainers.experiments.figures import band_caption
from plasticrl.trainers.experiments.plot import OKABE_ITO, palette, plot_runs, tag_title
from plasticrl.trainers.experiments.report import load_run, score_table, write_report

from tests.trainers.experiments.test_plot import RUN_A, RUN_B, returns, run_a_scalars, write_run
from tests.trainers.experiments.test_report import episodes, synthetic_run

RAW_TAG = re.compile(r"\b(charts|plasticity|losses|env)/\w+")
LONG = "a_method_with_a_long_name__optimizer.lr=0.0001__regularizers=spectral"


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Figure]]:
    figures: dict[str, Figure] = {}
    original = Figure.savefig

    def spy(self: Figure, fname: str | Path, *args: object, **kwargs: object) -> None:
        figures[Path(fname).name] = self
        original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    yield figures


def check_paper_ready(name: str, fig: Figure) -> None:
    """The properties every saved figure must have."""
    fig.canvas.draw()
    frame = fig.bbox
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert axes, name
    for ax in axes:
        assert ax.get_xlabel() or any(  # a panel over a strip sharing its x axis is labelled below
            other is not ax and other.get_shared_x_axes().joined(ax, other) and other.get_xlabel()
            for other in axes
        ), (name, ax.get_title())
        assert ax.get_ylabel(), (name, ax.get_title())
        assert not RAW_TAG.search(ax.get_title()), (name, ax.get_title())
    assert fig.get_suptitle() and not RAW_TAG.search(fig.get_suptitle()), name
    title = fig._suptitle.get_window_extent()
    assert frame.x0 <= title.x0 and title.x1 <= frame.x1 and title.y1 <= frame.y1 + 0.5, name
    (legend,) = fig.legends
    box = legend.get_window_extent()
    assert frame.x0 - 0.5 <= box.x0 and box.x1 <= frame.x1 + 0.5 and box.y0 >= frame.y0 - 0.5, name
    for line in legend.get_lines():
        colour = line.get_color()
        if line.get_linestyle() == "-":
            assert to_hex(colour).upper() in {c.upper() for c in OKABE_ITO}, (name, colour)


def test_plot_figures_are_paper_ready(tmp_path: Path, saved: dict[str, Figure]) -> None:
    a = write_run(tmp_path / "runs" / RUN_A, run_a_scalars())
    b = write_run(tmp_path / "runs" / RUN_B, {"charts/episodic_return": returns(30, 30, offset=2.0)})
    c = write_run(tmp_path / "runs" / LONG, {"charts/episodic_return": returns(10, 30)})
    written = plot_runs([a, b, c], tmp_path / "out")
    assert {p.suffix for p in written} == {".png", ".pdf"} and len(written) == len(saved)
    for png in (p for p in written if p.suffix == ".png"):
        assert png.with_suffix(".pdf") in written
        check_paper_ready(png.name, saved[png.name])
    labels = [t.get_text() for t in saved["episodic_return.png"].legends[0].get_texts()]
    assert "task switch" in labels and any(LONG[:20] in label for label in labels)


def test_report_figures_are_paper_ready_and_state_their_seeds(
    tmp_path: Path, saved: dict[str, Figure]
) -> None:
    root = tmp_path / "study"
    dormant = {"plasticity/dormant_fraction/tau_0": [(50, 0.1), (150, 0.3)]}
    for seed in range(2):
        synthetic_run(root / f"{LONG}__s{seed}", seed, episodes(float(seed), 1.0), extra=dormant)
    synthetic_run(root / "single__s0", 0, episodes(0.0, 2.0))
    written = write_report(sorted(root.iterdir()), tmp_path / "out", reps=200)
    pngs = [p for p in written if p.suffix == ".png"]
    assert {p.stem for p in pngs} == {
        "returns",
        "final_return_per_segment",
        "plasticity_gap",
        "dormant_fraction",
    }
    assert all(p.with_suffix(".pdf") in written for p in pngs)
    for png in pngs:
        fig = saved[png.name]
        check_paper_ready(png.name, fig)
        caption = fig.get_suptitle().replace("\n", " ")
        assert "1-2 seeds per method" in caption and "fewer than 5" in caption, caption
    labels = [t.get_text().replace("\n", "") for t in saved["returns.png"].legends[0].get_texts()]
    assert f"{LONG} (n = 2 seeds)" in labels and "single (n = 1 seed)" in labels and "task switch" in labels
    # The returns figure has the task id under it, as a step function over the two segments.
    strip = saved["returns.png"].axes[1]
    (line,) = [ln for ln in strip.get_lines() if ln.get_drawstyle() == "steps-post"][:1]
    xs, ys = list(line.get_xdata()), list(line.get_ydata())
    assert strip.get_ylabel() == "task id" and ys[0] == 0.0 and ys[-1] == 1.0 and xs[-1] == 200
    assert [x for x, y0, y1 in zip(xs[1:], ys, ys[1:], strict=False) if y1 != y0] == [100]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "![returns](returns.png)" in report and ".pdf)" not in report


def test_band_caption_says_how_many_seeds(tmp_path: Path) -> None:
    one = synthetic_run(tmp_path / "x__s0", 0, episodes(0.0, 1.0))
    assert band_caption(score_table([load_run(one)])) == "one seed per method: no shaded interval"
    many = [synthetic_run(tmp_path / f"y__s{s}", s, episodes(0.0, 1.0)) for s in range(5)]
    text = band_caption(score_table([load_run(p) for p in many]))
    assert text == "line: mean over seeds; shaded: 95 % bootstrap CI of the mean, 5 seeds per method"


def test_palette_is_colour_blind_safe_and_distinct() -> None:
    assert palette(8) == list(OKABE_ITO)
    many = palette(12)
    assert len({tuple(np.round(c, 6)) for c in many}) == 12


@pytest.mark.parametrize(
    ("tag", "title"),
    [
        ("charts/episodic_return", "Episodic return"),
        ("plasticity/dormant_fraction/tau_0.1", "Dormant units, τ = 0.1"),
        ("plasticity/dormant_persistent/tau_0/fc1", "Persistently dormant units, τ = 0, layer fc1"),
        ("plasticity/srank", "Feature rank (srank)"),
        ("plasticity/isometry_gap/actor.2", "Isometry gap, layer actor.2"),
        ("losses/td_loss", "TD loss"),
    ],
)
def test_titles_are_words(tag: str, title: str) -> None:
    assert tag_title(tag) == title
