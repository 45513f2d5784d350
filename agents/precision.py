"""Lower-precision matrix products for the input layer of a network (``network.input_precision``).

Contains:
    INPUT_PRECISIONS: the accepted values, name → torch dtype.
    ReducedPrecisionLinear: an ``nn.Linear`` whose product runs in a lower precision, its
        parameters and output float32.
    observation_dtype: the dtype a model's observations can be stored in without changing its
        outputs (a rollout's storage).

Note [Input precision]
    In the AdamO paper's protocol (a 4 × 64 MLP on 1,000 inputs, 2048 × 128 samples per rollout),
    the first layer holds 94 % of the network's weights and its two products per gradient step (the
    forward and the weight gradient; there is no input gradient) take most of the update's time on a
    CPU. On a CPU with bfloat16 matrix units (AMX, AVX512-BF16) and on a GPU, a bfloat16 product runs
    two to five times faster than float32. ``network.input_precision: bfloat16`` runs that layer's
    product in bfloat16: the input and the weight are rounded to bfloat16 (8 significant bits) for
    the product, which accumulates in float32; the bias is added in float32 and the output is
    float32, so every later layer is unchanged. The parameters stay float32 (the optimizer updates
    the float32 master weight; checkpoints are the same tensors as a float32 layer's), and the
    weight's gradient comes back through the rounding as the float32 gradient of the bfloat16
    product. MinAtar's observations are 0/1, which bfloat16 holds exactly, so the only rounding is
    the weight's (relative 2⁻⁹) and the gradient's. On a CPU without bfloat16 units the product is
    emulated and slower: it is opt-in, and ``benchmarks/throughput_ppo_protocol.py`` measures it
    beside float32 in one process.

    A PPO rollout then stores its observations in bfloat16 (:func:`observation_dtype`): the layer
    rounds its input to bfloat16 anyway, so the outputs are the same, and the 2048 × 128
    observations of a rollout take half the memory, are gathered into minibatches at half the
    bytes and are not converted again at every forward (for the protocol's 262,144 × 1,000 values
    the conversion alone costs about as much as the product it feeds).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["INPUT_PRECISIONS", "ReducedPrecisionLinear", "observation_dtype"]

INPUT_PRECISIONS: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""``network.input_precision`` values and the dtype of the input layer's product."""


class ReducedPrecisionLinear(nn.Linear):
    """``nn.Linear`` with its product in ``compute_dtype`` (Note [Input precision]).

    A subclass, so everything that finds a network's Linear layers (parameter groups, metrics,
    interventions, initialisation) treats it as one, and its state dict is a Linear's.

    Example:
        >>> layer = ReducedPrecisionLinear(4, 2, compute_dtype=torch.bfloat16)
        >>> layer(torch.ones(3, 4)).dtype
        torch.float32
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, compute_dtype: torch.dtype
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.compute_dtype = compute_dtype

    def forward(self, x: Tensor) -> Tensor:
        """``x Wᵀ`` in ``compute_dtype``, returned in the weight's dtype (float32), plus the bias."""
        out = F.linear(x.to(self.compute_dtype), self.weight.to(self.compute_dtype)).to(self.weight.dtype)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        """Linear's, with the product's dtype."""
        return f"{super().extra_repr()}, compute_dtype={self.compute_dtype}"


def observation_dtype(model: nn.Module) -> torch.dtype:
    """The dtype observations of ``model`` can be stored in: float32, or its input layers' product dtype.

    Lower than float32 only when the model's input layers are :class:`ReducedPrecisionLinear`
    (``network.input_precision``), which round their input to that dtype anyway, so storing it
    rounded changes no output. The networks that build them (``mlp``) build them as their first
    layer only; every input layer of the model must agree (an actor and a critic each have one).
    """
    dtypes = {m.compute_dtype for m in model.modules() if isinstance(m, ReducedPrecisionLinear)}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32
