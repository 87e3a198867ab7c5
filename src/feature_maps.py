"""Feature maps of ConvMLP stage by stage (the paper's visualisation), optionally beside a timm model.

:func:`convmlp_stage_maps` returns, for one image, the output of the tokenizer, of the conv stage and of
each ConvMLP stage (before the downsample to the next one): strides 4, 4, 8, 16, 32.
:func:`feature_grid` draws them as a grid: one row per stage, its ``k`` most active channels across,
each scaled to its own range; a timm model's stages go beside, aligned from the deepest one.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

__all__ = ['StageMap', 'convmlp_stage_maps', 'timm_stage_maps', 'top_channels', 'feature_grid',
           'figure_size_px', 'DPI']

# binary fractions of an inch, so sizes in pixels come out exact
CELL_INCHES = 1.25  # one panel
LABEL_INCHES = 1.0  # row labels left of each block
HEADER_INCHES = 0.5  # block title
DPI = 100

StageMap = Tuple[str, torch.Tensor]  # (label, (C, h, w) map of one image)


def _describe(name: str, fmap: torch.Tensor, image_height: int) -> str:
    return f'{name}\n{fmap.shape[0]} ch, 1/{round(image_height / fmap.shape[1])}'


@torch.no_grad()
def convmlp_stage_maps(model: nn.Module, image: torch.Tensor) -> List[StageMap]:
    """(label, (C, h, w) map) after the tokenizer, the conv stage and each ConvMLP stage, for ``image``
    of shape (1, 3, H, W). Stage outputs are taken before the stride-2 conv that leads to the next stage."""
    captured = []
    hooks = [model.tokenizer.register_forward_hook(lambda m, i, o: captured.append(('tokenizer', o))),
             model.conv_stages.downsample.register_forward_pre_hook(
                 lambda m, i: captured.append(('conv stage', i[0])))]
    for n, stage in enumerate(model.stages):
        hooks.append(stage.downsample_mlp.register_forward_pre_hook(
            lambda m, i, n=n: captured.append((f"ConvMLP stage {n + 1}", i[0]))))
    try:
        model.eval()(image)
    finally:
        for h in hooks:
            h.remove()
    return [(_describe(name, fmap[0], image.shape[2]), fmap[0].float()) for name, fmap in captured]


@torch.no_grad()
def timm_stage_maps(model: nn.Module, image: torch.Tensor) -> List[StageMap]:
    """(label, (C, h, w) map) of each feature level of a timm ``features_only`` model."""
    fmaps = model.eval()(image)
    names = model.feature_info.module_name()
    return [(_describe(name, fmap[0], image.shape[2]), fmap[0].float()) for name, fmap in zip(names, fmaps)]


def top_channels(fmap: torch.Tensor, k: int) -> List[int]:
    """Indices of the ``k`` channels of a (C, h, w) map with the highest mean activation, highest first."""
    return fmap.mean(dim=(1, 2)).topk(min(k, fmap.shape[0])).indices.tolist()


def figure_size_px(rows: int, k: int, blocks: int = 1) -> Tuple[int, int]:
    """(width, height) in pixels of a :func:`feature_grid` figure: ``rows`` rows (input + stages) of
    ``k`` panels, in ``blocks`` side-by-side blocks (2 with a comparison model)."""
    return (round(blocks * (LABEL_INCHES + k * CELL_INCHES) * DPI),
            round((HEADER_INCHES + rows * CELL_INCHES) * DPI))


def _panel(ax, fmap: torch.Tensor, channel: int) -> None:
    m = fmap[channel].numpy()
    ax.imshow((m - m.min()) / (m.max() - m.min() + 1e-12), cmap='viridis', interpolation='nearest')
    ax.set_title(f'ch {channel}', fontsize=7, pad=2)


def _block(subfig, image: np.ndarray, maps: Sequence[StageMap], rows: int, k: int, name: str) -> None:
    """One model's panels: input on the first row, then its stages, the deepest on the last row."""
    axes = subfig.subplots(rows, k, squeeze=False)
    width, height = LABEL_INCHES + k * CELL_INCHES, HEADER_INCHES + rows * CELL_INCHES
    subfig.subplots_adjust(left=LABEL_INCHES / width, right=0.99, bottom=0.01,
                           top=1 - HEADER_INCHES / height, wspace=0.08, hspace=0.3)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].imshow(image)
    axes[0, 0].set_ylabel('input', fontsize=8, rotation=0, ha='right', va='center', labelpad=4)
    for ax in axes[0, 1:]:
        ax.axis('off')
    subfig.suptitle(f'{name}\ntop {k} channels per stage by mean activation, each scaled to its range',
                    fontsize=8, y=1 - 0.05 * HEADER_INCHES / height, va='top')
    offset = rows - 1 - len(maps)  # > 0: fewer stages than rows, leave the shallow rows empty
    for r in range(1, rows):
        if r - 1 < offset:
            for ax in axes[r]:
                ax.axis('off')
            continue
        label, fmap = maps[r - 1 - offset]
        axes[r, 0].set_ylabel(label, fontsize=7, rotation=0, ha='right', va='center', labelpad=4)
        channels = top_channels(fmap, k)
        for c in range(k):
            if c < len(channels):
                _panel(axes[r, c], fmap, channels[c])
            else:
                axes[r, c].axis('off')


def feature_grid(image: np.ndarray, stages: Sequence[StageMap], k: int = 6, title: str = '',
                 compare: Optional[Sequence[StageMap]] = None, compare_title: str = ''):
    """A matplotlib figure: for ConvMLP (``stages``, named ``title``) the input image on the first row,
    then one row per stage with its ``k`` most active channels; with ``compare`` a second block for the
    other model, whose deepest stages sit beside the deepest ConvMLP ones (extra shallow ones dropped).

    ``image`` is (H, W, 3), uint8 or float in [0, 1]. Size: :func:`figure_size_px` of
    (1 + len(stages), k, 1 or 2)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state
    rows = 1 + len(stages)
    blocks = [(stages, title)]
    if compare is not None:
        blocks.append((list(compare)[-len(stages):], compare_title))
    width, height = figure_size_px(rows, k, len(blocks))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    for subfig, (maps, name) in zip(np.atleast_1d(fig.subfigures(1, len(blocks))), blocks):
        _block(subfig, image, maps, rows, k, name)
    return fig
