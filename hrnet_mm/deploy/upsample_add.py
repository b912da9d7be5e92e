"""The fuse step of HRNet's fuse layers in the deploy graph: ``x + F.interpolate(low, size=x.shape[-2:],
mode='nearest')`` [-> ReLU] as one call of ``hrnet_mm::upsample_add`` (``hrnet_mm/ops/csrc/upsample_add.cpp``),
which reads ``low`` in place of its upsampled copy and makes one pass over ``x`` instead of three (upsample, add,
ReLU). Its outputs equal torch's bit for bit, in float32 and bfloat16.

:func:`fuse_upsample_add` rewrites a traced graph (:func:`hrnet_mm.deploy.fold.fuse_onednn` calls it); the nodes it
adds call :func:`upsample_add`.
"""
from __future__ import annotations

import operator
from typing import Optional

import torch
import torch.nn.functional as F

from hrnet_mm.ops import winograd as winograd_ops


def available() -> bool:
    """Whether hrnet_mm's kernels (with ``hrnet_mm::upsample_add``) are built and loaded here."""
    return winograd_ops.available() and hasattr(torch.ops.hrnet_mm, 'upsample_add')


def upsample_add(x: torch.Tensor, low: torch.Tensor, relu: bool, inplace: bool,
                 like: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``relu?(x + F.interpolate(low, size=like.shape[-2:], mode='nearest'))`` for ``x`` (N, C, H, W) and ``low``
    (N, C, h, w); ``like`` defaults to ``x``. Written into ``x`` when ``inplace``. One pass for float32 or bfloat16
    channels_last tensors of equal sizes, torch's operators otherwise.

    Under ``torch.fx`` tracing (loading a pickled deploy model re-traces its code) it records itself as one node."""
    if isinstance(x, torch.fx.Proxy):
        return x.tracer.create_proxy('call_function', upsample_add, (x, low, relu, inplace) +
                                     (() if like is None else (like,)), {})
    if like is not None and like.shape[-2:] != x.shape[-2:]:  # a broadcasting sum, or the error torch gives
        out = x + F.interpolate(low, size=like.shape[-2:], mode='nearest')
        return torch.relu(out) if relu else out
    if inplace:
        torch.ops.hrnet_mm.upsample_add_.default(x, low, relu)
        return x
    return torch.ops.hrnet_mm.upsample_add.default(x, low, relu)


def _size_of(node: 'torch.fx.Node') -> Optional['torch.fx.Node']:
    """The node ``A`` when ``node`` is ``A.shape[-2:]`` (or ``A.shape[2:]``, ``A.size()[2:]``) of a 4-d map."""
    if node.op != 'call_function' or node.target is not operator.getitem or len(node.args) != 2:
        return None
    shape, index = node.args
    if index not in (slice(-2, None, None), slice(2, None, None)) or not isinstance(shape, torch.fx.Node):
        return None
    if shape.op == 'call_function' and shape.target is getattr and shape.args[1:] == ('shape',):
        return shape.args[0]
    if shape.op == 'call_method' and shape.target == 'size' and len(shape.args) == 1 and not shape.kwargs:
        return shape.args[0]
    return None


def _nearest_to_size_of(node: 'torch.fx.Node') -> Optional['torch.fx.Node']:
    """For ``node`` = ``F.interpolate(low, size=A.shape[-2:], mode='nearest')`` (no other options), ``A``."""
    if node.op != 'call_function' or node.target is not F.interpolate or len(node.args) != 1:
        return None
    kwargs = dict(node.kwargs)
    size = kwargs.pop('size', None)
    if kwargs.pop('mode', 'nearest') != 'nearest' or not isinstance(size, torch.fx.Node):
        return None
    if any(v not in (None, False) for v in kwargs.values()):  # scale_factor, align_corners, antialias, ...
        return None
    return _size_of(size)


def fuse_upsample_add(gm: 'torch.fx.GraphModule', inplace: bool = True) -> int:
    """Rewrites every ``A + F.interpolate(B, size=S.shape[-2:], mode='nearest')`` [-> ReLU] in ``gm``'s graph
    into one :func:`upsample_add` (into ``A`` when ``inplace`` and nothing else reads ``A``, a fresh result); returns
    how many. Does nothing where hrnet_mm's kernels are not built."""
    from .fold import _is_add, _is_relu, _owns_result
    if not available():
        return 0
    graph = gm.graph
    count = 0
    for node in list(graph.nodes):
        like = _nearest_to_size_of(node)
        if like is None or len(node.users) != 1 or not _is_add(next(iter(node.users))):
            continue
        add = next(iter(node.users))
        x = add.args[1] if add.args[0] is node else add.args[0]
        if x is node:
            continue
        last = add
        relu = len(add.users) == 1 and _is_relu(gm, next(iter(add.users)))
        if relu:
            last = next(iter(add.users))
        # in place when x is fresh and read only by this add and the size that feeds this upsampling
        size_nodes = {node.kwargs['size'], node.kwargs['size'].args[0]}
        into_x = inplace and _owns_result(gm, x) and all(u is add or u in size_nodes for u in x.users) and \
            all(len(s.users) == 1 for s in size_nodes)
        with graph.inserting_before(last):
            new = graph.call_function(upsample_add, (x, node.args[0], relu, into_x) + (() if like is x else (like,)))
        last.replace_all_uses_with(new)
        for dead in (last, add, node) if relu else (add, node):
            graph.erase_node(dead)
        count += 1
    graph.eliminate_dead_code()
    gm.recompile()
    return count
