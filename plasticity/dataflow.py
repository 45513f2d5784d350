"""Walking a ``torch.fx`` graph backwards, from nodes to the inputs they are computed from.

Contains:
    walk_back: every node reached from some start nodes through their inputs, once each, not
        crossing the nodes a predicate stops at.

Both readers of a network's data flow use it: which layer is the head
(:func:`plasticrl.plasticity.optimizers.head_module_names`) and which units an activation reads
(:class:`plasticrl.plasticity.probe.PlasticityProbe`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from torch import fx

__all__ = ["walk_back"]


def walk_back(start: Iterable[fx.Node], stop: Callable[[fx.Node], bool]) -> Iterator[fx.Node]:
    """Yield every node reached walking back from ``start`` through inputs, each once (depth first).

    A node for which ``stop(node)`` is true is yielded but its inputs are not followed.

    Example:
        >>> import torch
        >>> graph = fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())).graph
        >>> output = next(n for n in graph.nodes if n.op == "output")
        >>> [n.name for n in walk_back(output.all_input_nodes, lambda n: n.op == "call_module")]
        ['_1']
    """
    stack, seen = list(start), set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        yield node
        if not stop(node):
            stack.extend(node.all_input_nodes)
