"""Whole-model ONNX export: image in, the task head's raw tensors out, with the runtime recipe inside.

:func:`export_model` wraps a built model in its export graph (:func:`hrnet_mm.deploy.graphs.build_graph`),
folds BN, exports with dynamic height and width (and batch, except for two-stage detectors and CID: one
image),
stores the runtime recipe (:func:`hrnet_mm.deploy.recipe.runtime_recipe`) as the ONNX metadata entry
``hrnet_mm`` and checks the file: ``onnx.checker``, then onnxruntime against the unfolded PyTorch graph at
the export size and at each further size, ``max|ort - torch| / max|torch|`` per output.

A detector's outputs are per proposal. Proposals come out of NMS, where two boxes whose overlap or score
differs by a rounding error from the threshold or from each other may be kept by one runtime and not by the
other: a trained detector on random check images loses 0-1 proposals in a thousand that way, a random-weight
one (clustered boxes) up to a few percent. The check therefore pairs each onnxruntime proposal with the
PyTorch one at the same coordinates (within 1e-3 pixels) and compares the paired boxes, runs PyTorch's box head
on onnxruntime's own proposals and compares its class logits and deltas, and fails when more than 5% of the
proposals are unpaired.

Example::

    from hrnet_mm import get_model
    from hrnet_mm.deploy.whole import export_model
    model = get_model('td-hm_hrnet-w32_8xb64-210e_coco-256x192')
    report = export_model(model, model.cfg, 'pose.onnx', input_shape=(1, 3, 256, 192))
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .deform_conv import dynamo_translations, has_deform_conv, register_torchscript_symbolic
from .export import MIN_SIZE, TOLERANCE, ExportError, OnnxReport, Shape, _check_shape, _quiet, prepare, rel_error
from .graphs import CIDGraph, MaskRCNNGraph, TwoStageDetectorGraph, build_graph
from .recipe import METADATA_KEY, runtime_recipe

OPSET = 18  # the dynamo exporter's native opset; NMS, TopK and RoiAlign are exported as ONNX operators
UNPAIRED_LIMIT = 0.05
# The check's default tolerance for a graph with deformable convolutions (DEKR's head). Their outputs sample the
# feature map at predicted offsets, so an offset that differs in its last bits moves a bilinear sample along the
# map's slope: on the random-weight DEKR of the tests, the displacements differ by 6e-5 to 1.1e-4 of their
# largest value between onnxruntime and PyTorch (the heatmaps, 1.5e-6). A wrong offset or layout gives errors of
# the order of the outputs.
DEFORM_TOLERANCE = 5e-4


def _inputs(graph: nn.Module, shape: Shape, seed: int) -> Tuple[torch.Tensor, ...]:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if isinstance(graph, TwoStageDetectorGraph):
        return x, torch.tensor([float(shape[2]), float(shape[3])])
    return (x, )


def _export(graph: nn.Module, args: Tuple[torch.Tensor, ...], path: str, opset: int, exporter: str,
            input_names: List[str], output_names: List[str], batch_dynamic: bool) -> None:
    if exporter == 'dynamo':
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise ExportError("the 'dynamo' exporter needs the onnxscript package (pip install onnxscript); "
                              "or use exporter='torchscript'") from None
        from torch.export import Dim
        image = {2: Dim.DYNAMIC, 3: Dim.DYNAMIC}
        if batch_dynamic:
            image[0] = Dim.DYNAMIC
        shapes = (image, ) + (None, ) * (len(args) - 1)
        table = dynamo_translations() if has_deform_conv(graph) else None
        torch.onnx.export(graph, args, path, dynamo=True, opset_version=opset, input_names=input_names,
                          output_names=output_names, dynamic_shapes=shapes, verbose=False, external_data=False,
                          custom_translation_table=table)
    else:
        if has_deform_conv(graph):
            register_torchscript_symbolic(opset)
        axes = {input_names[0]: ({0: 'batch'} if batch_dynamic else {}) | {2: 'height', 3: 'width'}}
        axes.update({name: {0: f'{name}_0', 1: f'{name}_1'} for name in output_names})
        torch.onnx.export(graph, args, path, dynamo=False, opset_version=opset, input_names=input_names,
                          output_names=output_names, dynamic_axes=axes, do_constant_folding=True)


def _store_recipe(path: str, recipe: dict) -> None:
    import onnx

    proto = onnx.load(path)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(recipe)
    tmp = path + '.part'
    onnx.save(proto, tmp)
    os.replace(tmp, path)


def _session(path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def _pair_boxes(boxes: np.ndarray, want: np.ndarray, tolerance: float) -> Tuple[np.ndarray, np.ndarray]:
    """Each of ``boxes`` ``(N, 4)`` paired with its nearest row of ``want`` ``(M, 4)``; returns the indices into
    ``want`` and whether that row lies within ``tolerance`` pixels on every coordinate."""
    dist = np.abs(boxes[:, None, :].astype(np.float64) - want[None].astype(np.float64)).max(-1)
    match = dist.argmin(1)
    return match, dist[np.arange(len(boxes)), match] < tolerance


def compare_detector(graph: TwoStageDetectorGraph, args: Tuple[torch.Tensor, ...], got: Sequence[np.ndarray],
                     ref: Sequence[torch.Tensor]) -> Tuple[float, int]:
    """A detector's check: onnxruntime's proposals paired with PyTorch's by coordinates (within 1e-3 pixels),
    and PyTorch's RoI stages run on onnxruntime's own proposals.

    Returns:
        ``(max relative error, unpaired)``: the error over the paired proposals and over the RoI stages'
        outputs for every onnxruntime proposal, and the number of onnxruntime proposals without a PyTorch twin.
    """
    proposals, want = got[3], ref[3].double().numpy()
    unpaired = len(proposals)
    err = 0.0
    if len(proposals) and len(want):
        match, paired = _pair_boxes(proposals, want, 1e-3)
        unpaired = int((~paired).sum())
        if paired.any():
            err = rel_error(torch.from_numpy(proposals[paired]), ref[3][torch.from_numpy(match[paired])])
    if len(proposals):
        with torch.no_grad():
            head = graph.box_head(args[0], torch.from_numpy(proposals), args[1])
        err = max([err] + [rel_error(torch.from_numpy(g), r) for g, r in zip(got[:3], head)])
    return err, unpaired + max(0, len(want) - len(proposals))


def compare_final_detections(got: Sequence[np.ndarray], ref: Sequence[torch.Tensor]) -> Tuple[float, int]:
    """A Mask R-CNN check: onnxruntime's final boxes paired with PyTorch's by coordinates (within 0.01 pixels);
    returns ``(max relative error of the paired boxes, scores and mask logits, unpaired)``. Paired boxes of
    different labels count as unpaired."""
    boxes, want = got[0], ref[0].double().numpy()
    if len(boxes) == 0 or len(want) == 0:
        return 0.0, max(len(boxes), len(want))
    match, paired = _pair_boxes(boxes, want, 1e-2)
    paired &= got[2] == ref[2].numpy()[match]
    unpaired = int((~paired).sum()) + max(0, len(want) - len(boxes))
    if not paired.any():
        return 0.0, unpaired
    index = torch.from_numpy(match[paired])
    err = max(rel_error(torch.from_numpy(got[i][paired]), ref[i][index]) for i in (0, 1, 3))
    return err, unpaired


def compare_instances(got: Sequence[np.ndarray], ref: Sequence[torch.Tensor]) -> Tuple[float, int]:
    """A CID check: onnxruntime's people (centres with a score above 0) paired with PyTorch's by their centre
    pixel (``instance_coords``). Near-equal centre scores may come out of the top-k in another order, or one may
    swap with the next one outside it; returns ``(max relative error of the paired heatmaps and scores,
    unpaired)``."""
    want = {tuple(c): i for i, c in enumerate(ref[2].tolist())}
    peaks = got[1] > 0  # fewer local maxima than M: the top-k fills up with zeros at arbitrary pixels
    pairs = [(i, want[tuple(c)]) for i, c in enumerate(got[2].tolist()) if peaks[i] and tuple(c) in want]
    if not pairs:
        return 0.0, int(peaks.sum())
    mine, theirs = (torch.tensor(index) for index in zip(*pairs))
    err = max(rel_error(torch.from_numpy(got[i])[mine], ref[i][theirs]) for i in (0, 1))
    return err, int(peaks.sum()) - len(pairs)


def export_model(model: nn.Module, cfg, path: str, input_shape: Sequence[int] = (1, 3, 224, 224),
                 opset: int = OPSET, fold_bn: bool = True, check: bool = True,
                 check_shapes: Sequence[Sequence[int]] = (), exporter: str = 'dynamo',
                 tolerance: Optional[float] = None, config_name: str = '',
                 log: Optional[Callable[[str], None]] = None) -> OnnxReport:
    """Exports a whole mmdet/mmseg/mmpose/mmpretrain model to ONNX with its runtime recipe, and checks it.

    Args:
        model: The built model (not modified; the export runs on an eval-mode copy).
        cfg: Its config (``mmengine.Config``), for the test pipeline stored in the recipe.
        path: The ONNX file to write (its folder is created; written under a temporary name first).
        input_shape: ``(N, C, H, W)`` of the example input; ``N`` must be 1 for a two-stage detector.
        opset: ONNX opset (18 by default; NMS and RoiAlign need at least 16 with the torchscript exporter;
            DEKR's deformable convolutions raise it to 19).
        fold_bn: Fold every BN into the conv before it.
        check: Run ``onnx.checker`` and compare onnxruntime with PyTorch at ``input_shape`` and
            ``check_shapes``; raise :class:`ExportError` beyond ``tolerance`` (or, for a detector, more than
            5% unpaired proposals).
        check_shapes: More ``(N, C, H, W)`` inputs to check.
        exporter: ``'dynamo'`` or ``'torchscript'``.
        tolerance: Largest accepted relative error, per output (default :data:`~hrnet_mm.deploy.export.TOLERANCE`;
            :data:`DEFORM_TOLERANCE` for a graph with deformable convolutions).
        config_name: Stored in the recipe.
        log: Called with one line per step.

    Returns:
        An :class:`~hrnet_mm.deploy.export.OnnxReport` (``errors`` per checked shape).

    Raises:
        UnsupportedModelError: The model or its pipeline has no export graph or runtime equivalent.
        ExportError: The exporter failed, or the check failed.
    """
    say = log or (lambda line: None)
    input_shape = _check_shape(input_shape)
    check_shapes = [_check_shape(s) for s in check_shapes]
    graph, task = build_graph(model)
    if opset < getattr(graph, 'min_opset', 0):
        say(f'opset {opset} -> {graph.min_opset}: the graph needs ONNX DeformConv')
        opset = graph.min_opset
    if tolerance is None:
        tolerance = DEFORM_TOLERANCE if has_deform_conv(graph) else TOLERANCE
    recipe = runtime_recipe(model, cfg, task, config_name)
    two_stage = isinstance(graph, TwoStageDetectorGraph)
    one_image = two_stage or getattr(graph, 'one_image', False)
    if one_image and any(s[0] != 1 for s in [input_shape] + check_shapes):
        raise ValueError(f'a {"detector" if two_stage else type(graph).__name__} graph takes one image: use '
                         f'batch size 1')
    folded, count = prepare(graph, fold_bn)
    if fold_bn:
        say(f'fold BN: {count} conv+BN pairs folded')
    args = _inputs(graph, input_shape, 0)
    input_names = ['input', 'img_shape'][:len(args)]
    output_names = list(graph.output_names)
    with torch.no_grad():
        outputs = folded(*args)
    outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + '.part'
    start = time.perf_counter()
    try:
        with _quiet(), torch.no_grad():
            _export(folded, args, tmp, opset, exporter, input_names, output_names, not one_image)
        _store_recipe(tmp, recipe)
    except Exception as e:  # the exporters raise many types; report the first line
        if os.path.exists(tmp):
            os.remove(tmp)
        raise ExportError(f'{exporter} exporter failed: {type(e).__name__}: '
                          f'{(str(e).strip().splitlines() or [""])[0]}') from e
    os.replace(tmp, path)
    seconds = time.perf_counter() - start
    import onnx
    file_opset = next((o.version for o in onnx.load(path, load_external_data=False).opset_import
                       if o.domain in ('', 'ai.onnx')), opset)
    say(f'export: {path} ({task}, {exporter} exporter, opset {file_opset}, dynamic '
        f'{"height/width" if one_image else "batch/height/width"}, outputs {", ".join(output_names)}, '
        f'{os.path.getsize(path) / 2 ** 20:.1f} MiB) in {seconds:.1f} s')
    report = OnnxReport(path=path, exporter=exporter, opset=file_opset, input_shape=input_shape, dynamic=True,
                        folded_bn=count, input_names=input_names, output_names=output_names,
                        output_shapes=[tuple(o.shape) for o in outputs], export_seconds=seconds,
                        tolerance=tolerance)
    if not check:
        return report
    onnx.checker.check_model(path)
    say('check: onnx.checker passed')
    session = _session(path)
    failures = []
    for i, shape in enumerate([input_shape] + [s for s in check_shapes if s != input_shape]):
        args = _inputs(graph, shape, i)
        with torch.no_grad():
            ref = graph(*args)
        ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        got = session.run(None, {n: a.numpy() for n, a in zip(input_names, args)})
        unpaired = 0
        if isinstance(graph, MaskRCNNGraph):
            err, unpaired = compare_final_detections(got, ref)
        elif two_stage:
            err, unpaired = compare_detector(graph, args, got, ref)
        elif isinstance(graph, CIDGraph):
            err, unpaired = compare_instances(got, ref)
        else:
            err = max(rel_error(torch.from_numpy(g), r) for g, r in zip(got, ref))
        report.errors[shape] = err
        size = 'x'.join(map(str, shape))
        kind = 'detections' if isinstance(graph, MaskRCNNGraph) else 'people' if isinstance(graph, CIDGraph) \
            else 'proposals'
        paired = two_stage or isinstance(graph, CIDGraph)
        extra = f', {unpaired} of {len(ref[0])} {kind} unpaired' if paired else ''
        say(f'check {size}: onnxruntime vs PyTorch max relative error {err:.2e}{extra}')
        if isinstance(graph, CIDGraph):
            scores = ref[1][ref[1] > 0]
            ties = len(scores) - len(torch.unique(scores))
            if ties > UNPAIRED_LIMIT * max(len(scores), 1):  # which of equal centres the top-k takes is arbitrary
                extra += (f' ({ties} centre scores tie with another, as in an untrained model\'s saturated centre '
                          f'map: export trained weights, or skip the check with --no-check)')
        if err > tolerance or unpaired > UNPAIRED_LIMIT * max(len(ref[0]), 1):
            failures.append(f'{size}: {err:.2e}{extra}')
    if failures:
        raise ExportError(f'onnxruntime differs from PyTorch (tolerance {tolerance:g}) at {"; ".join(failures)}')
    return report


def calibration_inputs(model: nn.Module, cfg, count: int) -> Tuple[List[Dict[str, np.ndarray]], int]:
    """The graph inputs of the first ``count`` training images of ``cfg`` (its ``train_dataloader`` pipeline, then
    the model's data preprocessor), for :func:`hrnet_mm.deploy.runtimes.quantize_onnx`: one dict per batch, or per
    image for a one-image graph (a two-stage detector's also holds the image's ``img_shape`` inside the padded
    input), and how many images they hold.

    Raises:
        hrnet_mm.deploy.precision.PrecisionError: The config has no training set.
    """
    from .hook import training_batches

    graph, _ = build_graph(model)
    two_stage = isinstance(graph, TwoStageDetectorGraph)
    one_image = two_stage or getattr(graph, 'one_image', False)
    with torch.no_grad():
        batches, seen = training_batches(cfg, model, count)
    items: List[Dict[str, np.ndarray]] = []
    for data in batches:
        inputs = data['inputs'].float()
        if not one_image:
            items.append({'input': inputs.numpy()})
            continue
        for i in range(inputs.shape[0]):
            item = {'input': inputs[i:i + 1].numpy()}
            if two_stage:
                height, width = data['data_samples'][i].metainfo['img_shape'][:2]
                item['img_shape'] = np.array([height, width], dtype=np.float32)
            items.append(item)
    return items, seen


def export_int8(path: str, out: str, calibration: Sequence[Dict[str, np.ndarray]],
                log: Optional[Callable[[str], None]] = None) -> Optional[float]:
    """Writes to ``out`` the int8 form (QDQ, :func:`hrnet_mm.deploy.runtimes.quantize_onnx`) of the float32 export
    ``path``, calibrated on ``calibration`` (:func:`calibration_inputs`), with the same runtime recipe.

    Returns:
        The largest relative difference between the two files' outputs (onnxruntime) on the first calibration
        input; None for a graph whose outputs are lists of detections or people, which int8 may change in length
        (their cost is measured on the task metric).
    """
    from .runtimes import quantize_onnx

    say = log or (lambda line: None)
    start = time.perf_counter()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    quantize_onnx(path, out, calibration)
    say(f'int8: {out} ({os.path.getsize(out) / 2 ** 20:.1f} MiB; int8 weights per output channel, uint8 '
        f'activations calibrated on {len(calibration)} inputs) in {time.perf_counter() - start:.1f} s')
    recipe = read_recipe(path)
    if recipe.get('task') in ('detection', 'bottomup_pose'):
        return None
    ref, got = (_session(p).run(None, dict(calibration[0])) for p in (path, out))
    err = max(rel_error(torch.from_numpy(g), torch.from_numpy(r)) for g, r in zip(got, ref))
    say(f'int8 check: onnxruntime int8 vs float32 file max relative error {err:.2e} on a training image')
    return err


def read_recipe(path: str) -> Dict:
    """The runtime recipe stored in an ONNX file written by :func:`export_model`."""
    import onnx

    for entry in onnx.load(path, load_external_data=False).metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    raise ExportError(f'{path} has no {METADATA_KEY!r} metadata: it was not written by export_model')


__all__ = ['export_model', 'calibration_inputs', 'export_int8', 'read_recipe', 'compare_detector',
           'compare_final_detections', 'compare_instances', 'OPSET', 'MIN_SIZE', 'UNPAIRED_LIMIT']
