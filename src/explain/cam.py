"""Class activation maps (CAM): where a classifier looks for a class, on pytorch-grad-cam (``grad-cam`` 1.5.x).

    from src.explain.cam import class_activation_maps
    result = class_activation_maps(model, batch)                       # GradCAM at the last stage, predicted class
    result = class_activation_maps(model, batch, 'layercam', layer='stage1', target='square', names=names)
    result = class_activation_maps(resnet18, batch, 'gradcam++')       # torchvision / timm: default 'layer4'
    result.maps       # (B, H, W) float32 in [0, 1]: one map per image, the input's H and W
    result.classes    # the class each map explains: predicted, or the requested one
    result.probs      # the softmax probability of that class
    result.map_size   # (h, w) of the target layer's map before it was upsampled (2x2 is coarse)

The library hooks a module's output and the gradient of the class score at it, and expects both as
(B, C, h, w). ConvMLP's MLP stages run channels-last, (B, h, w, C): a block's output and the final norm's
are permuted here (:func:`convmlp_layers`) before the library sees them; without that the maps come out of
the right size and silently wrong. The user names a layer (``'stage3'``), never writes a reshape transform.
Other models take a module name (``model.get_submodule``), NCHW unless ``channels_last=True``.

``pytorch_grad_cam`` is imported on the first call (it takes seconds).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..convmlp import ConvMLP, nchw_view

__all__ = ['METHODS', 'CamLayer', 'CamResult', 'convmlp_layers', 'default_layer', 'resolve_layer',
           'layer_map_sizes', 'resolve_class', 'class_activation_maps', 'maps_by_method', 'smoothing_names',
           'overlay', 'MIN_MAP_SIDE']

# name -> (pytorch_grad_cam class, what it computes). All cost one forward and one backward pass (EigenCAM
# none); the library's ScoreCAM and AblationCAM (a forward per channel) and FullGrad (every bias, no layer)
# are left out.
METHODS: Dict[str, Tuple[str, str]] = {
    'gradcam': ('GradCAM', 'activations weighted by the mean gradient of each channel (Selvaraju et al. 2017)'),
    'gradcam++': ('GradCAMPlusPlus', 'GradCAM with second-order weights per position (Chattopadhay et al. 2018)'),
    'xgradcam': ('XGradCAM', 'GradCAM with activation-normalised channel weights (Fu et al. 2020)'),
    'hirescam': ('HiResCAM', 'gradient x activation per position, summed over channels (Draelos, Carin 2020)'),
    'gradcamelementwise': ('GradCAMElementWise', 'ReLU(gradient x activation) per position and channel, summed'),
    'layercam': ('LayerCAM', 'ReLU(gradient) x activation per position (Jiang et al. 2021)'),
    'eigencam': ('EigenCAM', 'first principal component of the activations: no gradient, class-agnostic, '
                             'its sign arbitrary (Muhammad, Yeasin 2020)'),
    'eigengradcam': ('EigenGradCAM', 'first principal component of gradient x activation'),
}
CLASS_AGNOSTIC = ('eigencam',)
MIN_MAP_SIDE = 4  # a target map smaller than this on a side is a blob: the tool warns and names finer layers


@dataclass(frozen=True)
class CamLayer:
    """A target layer: its name, the module whose output is hooked, and whether that output is channels-last
    (B, h, w, C) and goes to the library permuted to (B, C, h, w)."""
    name: str
    module: nn.Module
    channels_last: bool = False
    about: str = ''


def convmlp_layers(model: ConvMLP) -> Dict[str, CamLayer]:
    """ConvMLP's target layers by readable name, shallow to deep (strides for the default tokenizer):

    ``tokenizer``    the conv tokenizer's output, NCHW, stride 4
    ``conv_block``   the conv stage's last block: its conv-BN-ReLU branch (post-ReLU: the residual sum is
                     formed outside the module), NCHW, stride 4; absent without conv blocks
    ``conv_stage``   the conv stage's output (after its 3x3/2 conv), NCHW, stride 8
    ``stage1``..     the last block of MLP stage i: the stage's own map before the downsample to the next
                     one, channels-last (permuted), strides 8, 16, 32; the last one is the default
    ``norm``         the final LayerNorm, the map the head averages, channels-last (permuted), stride 32
    """
    layers = {'tokenizer': CamLayer('tokenizer', model.tokenizer, False, 'tokenizer output, stride 4')}
    if len(model.conv_stages.conv_blocks):
        layers['conv_block'] = CamLayer('conv_block', model.conv_stages.conv_blocks[-1], False,
                                        'the conv stage\'s last block (its conv-BN-ReLU branch), stride 4')
    layers['conv_stage'] = CamLayer('conv_stage', model.conv_stages, False, 'conv stage output, stride 8')
    for i, stage in enumerate(model.stages):
        layers[f'stage{i + 1}'] = CamLayer(f'stage{i + 1}', stage.blocks[-1], True,
                                           f'MLP stage {i + 1}, its last block, stride {2 ** (i + 3)}')
    if isinstance(model.norm, nn.LayerNorm):
        layers['norm'] = CamLayer('norm', model.norm, True, 'final LayerNorm (the map the head pools), stride 32')
    return layers


# ConvMLP module names that are targets too: (pattern, channels-last output). Modules inside a block
# (norm1, channel_mlp1, connect...) are not: their fc layers are called as functions (no hook fires), the rest
# are parts of one residual computation.
CONVMLP_MODULE_NAMES = ((r'tokenizer', False), (r'conv_stages', False), (r'conv_stages\.conv_blocks\.\d+', False),
                        (r'stages\.\d+', False), (r'stages\.\d+\.downsample_mlp', False),
                        (r'stages\.\d+\.blocks\.\d+', True), (r'norm', True))


def default_layer(model: nn.Module) -> str:
    """The layer maps come from when none is named: ConvMLP's last stage; a timm model's last feature
    level (``feature_info``); otherwise the last top-level module holding a convolution (torchvision's
    ResNet: ``layer4``)."""
    if isinstance(model, ConvMLP):
        return f'stage{len(model.stages)}'
    info = getattr(model, 'feature_info', None)
    if info is not None:
        names = info.module_name() if hasattr(info, 'module_name') else [d.get('module') for d in info]
        if names and names[-1]:
            return names[-1]
    for name, child in reversed(list(model.named_children())):
        if any(isinstance(m, nn.Conv2d) for m in child.modules()):
            return name
    raise ValueError(f'cannot choose a target layer of {type(model).__name__}: name one (a module name)')


def resolve_layer(model: nn.Module, layer: Optional[str] = None, channels_last: Optional[bool] = None) -> CamLayer:
    """The :class:`CamLayer` of ``layer`` (None: :func:`default_layer`). ConvMLP: a readable name of
    :func:`convmlp_layers` or a module name of :data:`CONVMLP_MODULE_NAMES`, its layout known. Other models:
    a module name, its output NCHW unless ``channels_last``. ValueError naming the choices otherwise."""
    name = layer or default_layer(model)
    if isinstance(model, ConvMLP):
        table = convmlp_layers(model)
        if name in table:
            found = table[name]
        else:
            layout = next((cl for pattern, cl in CONVMLP_MODULE_NAMES if re.fullmatch(pattern, name)), None)
            module = _submodule(model, name) if layout is not None else None
            if module is None:
                raise ValueError(f'no CAM layer {name!r} in ConvMLP: choose one of {", ".join(table)} (or a module '
                                 f'tokenizer, conv_stages, stages.I, stages.I.blocks.J); modules inside a block '
                                 f'give no usable map')
            found = CamLayer(name, module, layout, 'module')
        return found if channels_last is None else CamLayer(found.name, found.module, channels_last, found.about)
    module = _submodule(model, name)
    if module is None:
        children = ', '.join(n for n, _ in model.named_children())
        raise ValueError(f'no module {name!r} in {type(model).__name__}: its top-level modules are {children}')
    return CamLayer(name, module, bool(channels_last), 'module')


def _submodule(model: nn.Module, name: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


@torch.no_grad()
def layer_map_sizes(model: ConvMLP, height: int, width: int) -> Dict[str, Tuple[int, int]]:
    """(h, w) of each of :func:`convmlp_layers`' maps for a (height, width) input: one forward pass."""
    sizes = {}
    hooks = [layer.module.register_forward_hook(
        lambda m, i, o, layer=layer: sizes.__setitem__(layer.name, tuple(o.shape[1:3] if layer.channels_last
                                                                          else o.shape[2:4])))
        for layer in convmlp_layers(model).values()]
    was_training = model.training
    try:
        model.eval()(torch.zeros(1, model.in_chans, height, width, dtype=model.tokenizer.first_conv.weight.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return {name: sizes[name] for name in convmlp_layers(model) if name in sizes}


def resolve_class(spec: Union[int, str], names: Optional[Sequence[str]] = None) -> int:
    """A class index from an index or a name of ``names``: exact, else case-insensitive on the whole name
    or on one of its comma-separated synonyms ('tabby' for ImageNet's 'tabby, tabby cat') if that is
    unique. ValueError otherwise."""
    if isinstance(spec, (int, np.integer)) or (isinstance(spec, str) and spec.strip().isdigit()):
        index = int(spec)
        if names is not None and not 0 <= index < len(names):
            raise ValueError(f'class index {index} out of range: the model has {len(names)} classes (0..{len(names) - 1})')
        return index
    if names is None:
        raise ValueError(f'class {spec!r} is a name, but no class names were given: pass names= or an index')
    if spec in names:
        return list(names).index(spec)
    key = spec.strip().lower()
    hits = [i for i, n in enumerate(names)
            if key == n.lower() or key in (s.strip().lower() for s in n.split(','))]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise ValueError(f'class {spec!r} names {len(hits)} classes ({", ".join(names[i] for i in hits[:4])}): '
                         f'give its index')
    import difflib
    close = difflib.get_close_matches(spec, list(names), n=3)
    shown = close or list(names[:8])
    raise ValueError(f'unknown class {spec!r}: give an index 0..{len(names) - 1} or a name'
                     f'{" like" if close else ","} {", ".join(map(repr, shown))}{"" if close or len(names) <= 8 else ", ..."}')


class _ClassScore:
    """The library's target: the score of one class in one image's output row; ``index`` None is that
    image's top class."""

    def __init__(self, index: Optional[int]):
        self.index = index

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if output.dim() != 1:
            raise ValueError(f'the model gives {tuple(output.shape)} per image, not class scores: CAM needs a '
                             f'classifier (a headless model works with the class-agnostic eigencam only)')
        index = int(output.argmax()) if self.index is None else self.index
        if not 0 <= index < output.shape[0]:
            raise ValueError(f'class index {index} out of range: the model has {output.shape[0]} classes')
        return output[index]


def _targets(target, batch: int, names: Optional[Sequence[str]]) -> List[Optional[int]]:
    if target is None:
        return [None] * batch
    if isinstance(target, (int, str, np.integer)):
        return [resolve_class(target, names)] * batch
    indices = [resolve_class(t, names) for t in target]
    if len(indices) != batch:
        raise ValueError(f'{len(indices)} target classes for {batch} images: give one for all, or one per image')
    return indices


def _library_class(method: str):
    """The pytorch_grad_cam class of ``method``; the eigen methods with a thin SVD."""
    if method not in METHODS:
        raise ValueError(f'unknown CAM method {method!r}: choose one of {", ".join(METHODS)}')
    import pytorch_grad_cam
    base = getattr(pytorch_grad_cam, METHODS[method][0])
    if not method.startswith('eigen'):
        return base

    class Thin(base):
        """The library's projection on the first principal component, computed with a thin SVD: the same
        map (up to the sign SVD leaves open, which the library does not fix either), without the
        (h*w) x (h*w) matrix a full SVD builds: 1 GB and minutes at stride 4 on a 512 px input."""

        def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth):
            return _first_component(activations if method == 'eigencam' else grads * activations)

    Thin.__name__ = base.__name__
    return Thin


def _first_component(activations: np.ndarray) -> np.ndarray:
    """(B, C, h, w) -> (B, h, w): each map's positions projected on their first principal component (the
    library's ``get_2d_projection``: NaN as 0, centred per channel)."""
    out = []
    for a in np.nan_to_num(activations):
        flat = a.reshape(a.shape[0], -1).T
        flat = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat, full_matrices=False)
        out.append((flat @ vt[0]).reshape(a.shape[1:]))
    return np.float32(out)


@dataclass
class CamResult:
    """Maps of a batch and what they explain."""
    maps: np.ndarray                 # (B, H, W) float32 in [0, 1], the input's H and W
    classes: List[Optional[int]]     # the class each map explains (None: a headless model's eigencam)
    probs: List[Optional[float]]     # the softmax probability of that class
    method: str
    layer: str
    map_size: Tuple[int, int]        # (h, w) of the target layer's map, before upsampling


def class_activation_maps(model: nn.Module, images: torch.Tensor, method: str = 'gradcam',
                          layer: Optional[str] = None, target=None, names: Optional[Sequence[str]] = None,
                          channels_last: Optional[bool] = None, eigen_smooth: bool = False,
                          aug_smooth: bool = False) -> CamResult:
    """One map per image of ``images`` (B, C, H, W), preprocessed as the model expects: ``method`` of
    :data:`METHODS` at ``layer`` (:func:`resolve_layer`; default :func:`default_layer`), explaining
    ``target`` (None: each image's predicted class; an index or a name of ``names`` for all images; or one per
    image). The library upsamples each map bilinearly to H x W and scales it to [0, 1].

    The library's two smoothings: ``eigen_smooth``, each map the first principal component of the method's
    weighted activations instead of their sum over channels (less noise; its sign arbitrary, as EigenCAM's;
    the library's full SVD, whose (h*w) x (h*w) matrix is 40 MB at a 56x56 map and 1 GB at 128x128);
    ``aug_smooth``, the mean of the maps of its test-time augmentations (horizontal flip x intensity 0.9, 1,
    1.1: six passes), each mapped back, all explaining the class of the image as given.

    Works under ``torch.no_grad()``/``inference_mode`` and on frozen models. The model is left as it was:
    train/eval mode, ``requires_grad`` and ``.grad`` of its parameters (it runs in eval mode with the
    parameters' gradients off: the gradient reaches the layer through the input)."""
    return maps_by_method(model, images, [method], layer, target, names, channels_last, eigen_smooth,
                          aug_smooth)[method.lower()]


def smoothing_names(eigen_smooth: bool, aug_smooth: bool) -> List[str]:
    """The smoothings asked for, by name ('eigen', 'aug'), for titles and reports."""
    return [name for name, on in (('eigen', eigen_smooth), ('aug', aug_smooth)) if on]


def _shared_pass(cams: dict, runner: str, x: torch.Tensor, targets: list, eigen_smooth: bool, layer: str) -> dict:
    """{method: (B, H, W) maps} at ``layer`` from one forward and one backward pass, run by ``cams[runner]``;
    each other method's library object computes its maps from that pass's activations and gradients, as its
    own call would."""
    first = cams[runner]
    try:
        maps = {runner: first(input_tensor=x, targets=targets, eigen_smooth=eigen_smooth)}
    except Exception:
        if not first.activations_and_grads.activations:
            raise ValueError(f'layer {layer!r} gave no output: its module is not called as a module in the forward '
                             f'pass; choose another') from None
        raise
    shared = first.activations_and_grads
    for m, cam in cams.items():
        if m != runner:  # the library's steps after its backward pass, on the shared hooks' tensors
            cam.activations_and_grads.activations = shared.activations
            cam.activations_and_grads.gradients = shared.gradients
            maps[m] = cam.aggregate_multi_layers(cam.compute_cam_per_layer(x, targets, eigen_smooth))
    return maps


def _augmented_maps(cams: dict, runner: str, x: torch.Tensor, targets: list, eigen_smooth: bool, layer: str) -> dict:
    """The library's ``aug_smooth`` on the shared pass: each test-time augmentation of ``x`` (its
    ``tta_transforms``) through :func:`_shared_pass`, each map mapped back, the mean per method."""
    total = {}
    transforms = list(cams[runner].tta_transforms)
    for transform in transforms:
        maps = _shared_pass(cams, runner, transform.augment_image(x), targets, eigen_smooth, layer)
        for m, v in maps.items():
            back = transform.deaugment_mask(torch.from_numpy(np.float32(v))[:, None])[:, 0].numpy()
            total[m] = total.get(m, 0) + back
    return {m: v / len(transforms) for m, v in total.items()}


def maps_by_method(model: nn.Module, images: torch.Tensor, methods: Sequence[str], layer: Optional[str] = None,
                   target=None, names: Optional[Sequence[str]] = None, channels_last: Optional[bool] = None,
                   eigen_smooth: bool = False, aug_smooth: bool = False) -> Dict[str, CamResult]:
    """:func:`class_activation_maps` for several methods at once: {method: result}. They share one forward
    and one backward pass (the library's hooks of the first method; with ``aug_smooth``, one per
    augmentation); each method's library object then computes its map from those activations and gradients,
    as its own call would."""
    methods = list(dict.fromkeys(m.lower() for m in methods))
    if not methods:
        raise ValueError(f'no CAM method given: choose from {", ".join(METHODS)}')
    classes = {m: _library_class(m) for m in methods}
    if images.dim() != 4:
        raise ValueError(f'expected an image batch (B, C, H, W); got shape {tuple(images.shape)}')
    chosen = resolve_layer(model, layer, channels_last)
    targets = [_ClassScore(i) for i in _targets(target, len(images), names)]
    reshape = nchw_view if chosen.channels_last else None
    # the pass: with a gradient method's object if any method needs gradients (its forward runs the backward)
    runner = next((m for m in methods if m not in CLASS_AGNOSTIC), methods[0])
    was_training = model.training
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    cams = {}
    try:
        for p, _, _ in params:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)
            cams = {m: classes[m](model=model, target_layers=[chosen.module], reshape_transform=reshape)
                    for m in methods}
            if aug_smooth:  # every augmentation explains the class of the image as given
                with torch.no_grad():
                    outputs = model(images)
                if outputs.dim() == 2:
                    targets = [_ClassScore(int(outputs[i].argmax()) if t.index is None else t.index)
                               for i, t in enumerate(targets)]
                maps = _augmented_maps(cams, runner, x, targets, eigen_smooth, chosen.name)
            else:
                maps = _shared_pass(cams, runner, x, targets, eigen_smooth, chosen.name)
                outputs = cams[runner].outputs.detach()
            activation = cams[runner].activations_and_grads.activations[0]
    finally:
        for cam in cams.values():
            cam.activations_and_grads.release()
        model.train(was_training)
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad
    if activation.dim() != 4:
        raise ValueError(f'layer {chosen.name!r} gives {tuple(activation.shape)}, not a map (B, C, h, w)')
    if outputs.dim() == 2:
        probs = outputs.float().softmax(-1)
        chosen_classes = [int(probs[i].argmax()) if t.index is None else t.index for i, t in enumerate(targets)]
        if max(chosen_classes) >= probs.shape[1]:
            raise ValueError(f'class index {max(chosen_classes)} out of range: the model has {probs.shape[1]} classes')
        chances = [float(probs[i, c]) for i, c in enumerate(chosen_classes)]
    else:  # a headless model: only a class-agnostic method got here (the others needed a class score)
        chosen_classes, chances = [None] * len(images), [None] * len(images)
    size = tuple(activation.shape[2:4])
    return {m: CamResult(np.float32(maps[m]), chosen_classes, chances, m, chosen.name, size) for m in methods}


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5, colormap: str = 'jet') -> np.ndarray:
    """The map over the image: (H, W, 3) uint8 and (H, W) in [0, 1] -> (H, W, 3) uint8, ``alpha`` of the
    map's colour (matplotlib's ``colormap``, jet as the library's ``show_cam_on_image``)."""
    import matplotlib
    colour = matplotlib.colormaps[colormap](np.clip(cam, 0, 1))[..., :3]
    mixed = (1 - alpha) * image.astype(np.float32) / 255 + alpha * colour
    return np.uint8(np.round(np.clip(mixed, 0, 1) * 255))
