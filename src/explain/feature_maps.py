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

__all__ = ['StageMap', 'convmlp_stage_maps', 'timm_stage_maps', 'token_block_maps', 'evenly_spaced',
           'top_channels', 'feature_grid', 'figure_size_px', 'channel_mosaic', 'stage_rows_figure',
           'stage_rows_size_px', 'png_bytes', 'DPI']

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
    of shape (1, 3, H, W). Stage outputs are taken before the stride-2 conv that leads to the next stage.
    Ablation rows (:data:`src.convmlp.ABLATION`): no conv-stage map when the conv stage is off, and stages
    without depthwise conv are labelled 'MLP stage'."""
    captured = []
    hooks = [model.tokenizer.register_forward_hook(lambda m, i, o: captured.append(('tokenizer', o)))]
    if len(model.conv_stages.conv_blocks):  # an ablation row without conv stage: its map is the tokenizer's
        hooks.append(model.conv_stages.downsample.register_forward_pre_hook(
            lambda m, i: captured.append(('conv stage', i[0]))))
    kind = 'ConvMLP' if not isinstance(model.stages[0].blocks[0].connect, nn.Identity) else 'MLP'
    for n, stage in enumerate(model.stages):
        hooks.append(stage.downsample_mlp.register_forward_pre_hook(
            lambda m, i, n=n: captured.append((f"{kind} stage {n + 1}", i[0]))))
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


def evenly_spaced(depth: int, n: int) -> List[int]:
    """``n`` block indices spread evenly over ``depth`` blocks, ending with the last: 12, 4 -> [2, 5, 8, 11]."""
    if not 0 < n <= depth:
        raise ValueError(f'cannot take {n} of {depth} blocks')
    return [round((i + 1) * depth / n) - 1 for i in range(n)]


@torch.no_grad()
def token_block_maps(model: nn.Module, image: torch.Tensor, n: int = 4) -> List[StageMap]:
    """(label, (C, h, w) map) of ``n`` evenly spaced blocks of a timm token model without stages
    (MLP-Mixer, ViT...): each block's tokens reshaped to the patch grid (timm's ``forward_intermediates``,
    prefix tokens dropped), e.g. blocks 3, 6, 9, 12 of MLP-Mixer-B/16, 14x14 tokens at 224."""
    depth = len(model.blocks)
    take = evenly_spaced(depth, n)
    fmaps = model.eval().forward_intermediates(image, indices=take, intermediates_only=True)
    return [(f'block {i + 1}/{depth}\n{f.shape[1]} ch, {f.shape[2]}x{f.shape[3]} tokens', f[0].float())
            for i, f in zip(take, fmaps)]


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


# the stage-rows figure (visualize.py --figure ablation): one row per model, input then stages across
ROW_LABEL_INCHES = 1.5
PANEL_INCHES = 1.5
ROW_INCHES = 1.75  # a panel and its two-line title
TITLE_INCHES = 0.5


def stage_rows_size_px(rows: int, stages: int = 4) -> Tuple[int, int]:
    """(width, height) in pixels of a :func:`stage_rows_figure` of ``rows`` models and ``stages`` stages."""
    return (round((ROW_LABEL_INCHES + (1 + stages) * PANEL_INCHES) * DPI),
            round((TITLE_INCHES + rows * ROW_INCHES) * DPI))


def channel_mosaic(fmap: torch.Tensor, k: int, tile: int = 64) -> np.ndarray:
    """The ``k`` most active channels of a (C, h, w) map tiled in a near-square grid, each scaled to
    [0, 1] on its own and enlarged (nearest) to about ``tile`` px; NaN (drawn blank) in the two-pixel
    gaps and unused tiles."""
    channels = top_channels(fmap, k)
    cols = int(np.ceil(np.sqrt(len(channels))))
    rows = int(np.ceil(len(channels) / cols))
    scale = max(1, int(np.ceil(tile / max(fmap.shape[1:]))))
    h, w = fmap.shape[1] * scale, fmap.shape[2] * scale
    gap = 2
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan, dtype=np.float32)
    for n, c in enumerate(channels):
        m = fmap[c].numpy()
        m = ((m - m.min()) / (m.max() - m.min() + 1e-12)).repeat(scale, 0).repeat(scale, 1)
        r, q = divmod(n, cols)
        out[r * (h + gap):r * (h + gap) + h, q * (w + gap):q * (w + gap) + w] = m
    return out


def stage_rows_figure(image: np.ndarray, rows: Sequence[Tuple[str, Sequence[StageMap]]], k: int = 4,
                      title: str = ''):
    """A matplotlib figure with one row per model (``rows``: (row label, its stage maps)): the input
    image, then 'stage 1', 'stage 2'... across, each panel the :func:`channel_mosaic` of the ``k`` most
    active channels of that stage, titled with the map's label. Size: :func:`stage_rows_size_px`."""
    import matplotlib
    from matplotlib.figure import Figure
    stages = max(len(maps) for _, maps in rows)
    width, height = stage_rows_size_px(len(rows), stages)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    axes = fig.subplots(len(rows), 1 + stages, squeeze=False)
    fig.subplots_adjust(left=ROW_LABEL_INCHES * DPI / width, right=0.995, bottom=0.01,
                        top=1 - TITLE_INCHES * DPI / height, wspace=0.12, hspace=0.42)
    cmap = matplotlib.colormaps['viridis'].copy()
    cmap.set_bad('white')
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for r, (label, maps) in enumerate(rows):
        axes[r, 0].imshow(image)
        axes[r, 0].set_title('input', fontsize=7, pad=2)
        axes[r, 0].set_ylabel(label, fontsize=8, rotation=0, ha='right', va='center', labelpad=6)
        for s in range(stages):
            ax = axes[r, 1 + s]
            if s >= len(maps):
                ax.axis('off')
                continue
            name, fmap = maps[s]
            ax.imshow(channel_mosaic(fmap, k), cmap=cmap, vmin=0, vmax=1, interpolation='nearest')
            ax.set_title(f'stage {s + 1}: {name}', fontsize=6.5, pad=2)
    if title:
        fig.suptitle(title, fontsize=8, y=1 - 0.08 * TITLE_INCHES * DPI / height, va='top')
    return fig


def png_bytes(fig, palette: bool = False) -> bytes:
    """The figure as PNG at :data:`DPI`; ``palette``: 256 colours (median cut), about a third of the bytes."""
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=DPI)
    if not palette:
        return buf.getvalue()
    from PIL import Image
    buf.seek(0)
    out = io.BytesIO()
    Image.open(buf).convert('RGB').quantize(256, method=Image.Quantize.MEDIANCUT).save(out, 'PNG', optimize=True)
    return out.getvalue()
