"""The empirical NTK in bounded memory (Note [Chunked NTK] in ``plasticrl.plasticity.metrics``).

Θ summed over parameter blocks and sample chunks equals J_θ J_θᵀ formed whole (float64), the
blocks partition the parameters, and the memory held stays near the cap, not at N·A·P floats.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from plasticrl.plasticity.metrics import _ntk_blocks, empirical_ntk
from torch import nn
from torch.func import functional_call, jacrev, vmap

REPO = Path(__file__).resolve().parents[2]


def small_conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
        nn.Tanh(),
        nn.Linear(5, 3),
    ).double()


def direct_ntk(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """J_θ (every parameter, every sample) formed whole, then J_θ J_θᵀ: the reference."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (xi.unsqueeze(0),)).reshape(-1)

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)
    rows = next(iter(jac.values())).shape[:2].numel()
    j = torch.cat([v.reshape(rows, -1) for v in jac.values()], dim=1)
    return j @ j.T


class SharedLinear(nn.Module):
    """One Linear applied twice: its NTK term does not factor, so it takes the generic blocks."""

    def __init__(self, width: int, outputs: int) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.out = nn.Linear(width, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


@pytest.mark.parametrize("columns", [10**6, 100, 37])
def test_chunked_ntk_equals_the_direct_product(columns: int) -> None:
    net = small_conv_net()
    x = torch.randn(7, 2, 6, 6, dtype=torch.float64)
    rows = 7 * 3
    params = {k: v for k, v in net.named_parameters()}
    blocks = _ntk_blocks(params, columns)
    if columns < 320:  # 320 parameters: several blocks, the 240-weight Linear cut across blocks
        assert len(blocks) > 2 and any(start > 0 for block in blocks for _, start, _ in block)
    got = empirical_ntk(net, x, max_bytes=rows * 8 * columns)  # float64: 8 bytes per entry
    want = direct_ntk(net, x)
    assert got.dtype == torch.float64 and got.shape == (rows, rows)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, got.T, rtol=0, atol=1e-13)


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # vmap over orthogonal's tril_
def test_layers_that_do_not_factor_take_the_generic_blocks_and_agree() -> None:
    torch.manual_seed(2)
    shared = SharedLinear(5, 2).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    for max_bytes in (10**6, 12 * 8 * 7):  # one block; 7 columns per block (the 30-weight Linear cut)
        torch.testing.assert_close(empirical_ntk(shared, x, max_bytes=max_bytes), direct_ntk(shared, x))
    parametrized = small_conv_net()
    nn.utils.parametrizations.orthogonal(parametrized[5])  # trained through its unconstrained tensor
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(
        empirical_ntk(parametrized, x, max_bytes=12 * 8 * 50), direct_ntk(parametrized, x)
    )


def test_blocks_partition_the_flattened_parameters_in_order() -> None:
    params = {"a": torch.zeros(5), "b": torch.zeros(3), "c": torch.zeros(7)}
    assert _ntk_blocks(params, 4) == [
        [("a", 0, 4)],
        [("a", 4, 5), ("b", 0, 3)],
        [("c", 0, 4)],
        [("c", 4, 7)],
    ]
    assert _ntk_blocks(params, 100) == [[("a", 0, 5), ("b", 0, 3), ("c", 0, 7)]]


def test_linear_model_ntk_matches_its_closed_form_when_cut_into_blocks() -> None:
    # f(x) = Wx + b, one output: Θ(x, x') = xᵀx' + 1, whatever the blocks.
    torch.manual_seed(1)
    lin = nn.Linear(6, 1).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    want = x @ x.T + 1
    for max_bytes in (10**6, 5 * 8 * 2, 1):
        torch.testing.assert_close(empirical_ntk(lin, x, max_bytes=max_bytes), want)


def test_bad_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes must be >= 1, got 0"):
        empirical_ntk(nn.Linear(2, 1), torch.zeros(2, 2), max_bytes=0)


def test_no_jacobian_block_exceeds_the_cap_and_dense_layers_are_factored(monkeypatch) -> None:
    from plasticrl.plasticity import metrics

    blocks: list[tuple[int, int, int]] = []  # (bytes of the block's J, sample chunk, touched entries)
    real = metrics._block_jacobian

    def spy(model, params, buffers, block, inputs, chunk):
        j = real(model, params, buffers, block, inputs, chunk)
        blocks.append((j.numel() * j.element_size(), chunk, sum(params[n].numel() for n, _, _ in block)))
        return j

    monkeypatch.setattr(metrics, "_block_jacobian", spy)
    torch.manual_seed(3)
    net = SharedLinear(64, 4)  # lin: 4,160 parameters, applied twice (blocks); out: 260 (factored)
    x = torch.randn(8, 64)
    cap = 32 * 4 * 500  # 500 float32 columns of the 32 rows per block
    got = empirical_ntk(net, x, max_bytes=cap)
    assert len(blocks) == 9  # ceil(4,160 / 500): only lin's parameters take blocks
    assert all(size <= cap for size, _, _ in blocks)
    assert all(chunk == 1 for _, chunk, _ in blocks)  # 4 outputs x 4,160 touched x 4 bytes > cap / 2
    want = empirical_ntk(net, x, max_bytes=2**40)
    assert float((got - want).norm() / want.norm()) < 1e-5


@pytest.mark.slow  # ~15 s: a subprocess measuring peak RSS
def test_peak_memory_stays_near_the_cap_not_at_the_whole_jacobian() -> None:
    # A 1M-weight Linear applied twice (the generic blocks), 8 samples x 4 outputs: J_θ whole is
    # 32 x 1.05M float32 = 134 MB (and the per-sample gradients as much again). First with a 16 MB
    # cap, then uncapped (one block, every sample at once) in the same process: peak RSS only grows,
    # so the second growth includes the first.
    script = textwrap.dedent(
        """
        import resource, torch
        from plasticrl.plasticity.metrics import empirical_ntk
        from tests.plasticity.test_ntk_chunked import SharedLinear
        torch.manual_seed(0)
        net = SharedLinear(1024, 4)
        x = torch.randn(8, 1024)
        empirical_ntk(SharedLinear(3, 2), torch.randn(2, 3), max_bytes=64)  # torch.func's one-off set-up
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        before = peak()
        capped = empirical_ntk(net, x, max_bytes=16 * 2**20)
        grown_capped = peak() - before
        whole = empirical_ntk(net, x, max_bytes=2**40)
        grown_whole = peak() - before
        assert float((capped - whole).norm() / whole.norm()) < 1e-5  # float32 J entries, rounded apart
        print(grown_capped, grown_whole)
        """
    )
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )
    capped_mb, whole_mb = (float(v) for v in out.stdout.split())
    # Measured: capped 145-180 MB (allocator slack included), whole 400-530 MB.
    assert whole_mb > 300, f"the uncapped NTK grew peak RSS only {whole_mb:.0f} MB"
    assert capped_mb < 0.6 * whole_mb, (capped_mb, whole_mb)
