"""ConvMLP: Hierarchical Convolutional MLPs for Vision (Li et al., arXiv 2109.04454).

Pure PyTorch (no timm, no OpenMMLab). Module and parameter names follow the authors' released
checkpoints, so those load with ``strict=True``:

    tokenizer.block.{0..9}                    conv-BN-ReLU x3, max-pool        (B,3,H,W) -> (B,C,H/4,W/4)
    conv_stages.conv_blocks.{i}.{0..8}        residual conv bottlenecks        (B,C,H/4,W/4)
    conv_stages.downsample                    conv3x3 s2                       -> (B,d0,H/8,W/8)
    stages.{i}.blocks.{j}.*                   ConvMLP blocks, channels-last    (B,h,w,d_i)
    stages.{i}.downsample_mlp.downsample      conv3x3 s2 (all but last stage)  -> (B,h/2,w/2,d_{i+1})
    norm, head                                LayerNorm, Linear (classifier only)

The MLP stages work on channels-last ``(B, H, W, C)`` tensors: LayerNorm and Linear act on the last
dim, and the depthwise and downsampling convs see an NCHW *view* of the same memory, so a model and
input in ``torch.channels_last`` run without a single layout copy.
"""
import contextlib
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

__all__ = ['ConvMLP', 'convmlp_s', 'convmlp_m', 'convmlp_l', 'MIN_INPUT_SIZE', 'ARCHS', 'ABLATION']

MIN_INPUT_SIZE = 32


def _check_input(x: torch.Tensor, in_chans: int, dtype: torch.dtype) -> None:
    """Raise ValueError unless ``x`` is a (B, in_chans, H>=32, W>=32) floating batch the model can take.

    A leaf for ``torch.fx`` (wrapped below): a traced graph calls it on the real input, as eager does."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(f'ConvMLP expects a 4-D image batch (B, {in_chans}, H, W); got shape {tuple(x.shape)}')
    if x.shape[2] < MIN_INPUT_SIZE or x.shape[3] < MIN_INPUT_SIZE:
        raise ValueError(f'ConvMLP expects H and W >= {MIN_INPUT_SIZE} px; got {x.shape[2]}x{x.shape[3]}: '
                         f'resize or pad the input')
    if x.dtype != dtype and not (x.is_floating_point() and torch.is_autocast_enabled(x.device.type)):
        raise ValueError(f'ConvMLP expects {dtype} input (the dtype of its weights); got {x.dtype}: convert '
                         f'with x.to({dtype}) or run under torch.autocast')


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with prob ``drop_prob``, rescale the rest.
    A leaf for ``torch.fx`` (wrapped below), so a graph traced in training mode draws its masks per call."""
    if drop_prob == 0. or not training:
        return x
    keep = 1. - drop_prob
    mask = x.new_empty([x.shape[0]] + [1] * (x.dim() - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


torch.fx.wrap('_check_input')
torch.fx.wrap('drop_path')


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode)."""

    def __init__(self, drop_prob: float = 0.):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob:.3f}'


@contextlib.contextmanager
def batchnorm_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Inside: BatchNorm layers of ``module`` normalise as usual but leave their running statistics and
    batch counters untouched (for checkpoint recomputation, which must not update them a second time)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.training and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.  # running = (1 - 0) * running + 0 * batch: unchanged
    try:
        yield
    finally:
        for m, (momentum, count) in zip(bns, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def checkpointed(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``; when autograd records, only ``x`` is kept for backward and the activations inside
    are recomputed there (BatchNorm running statistics still update once). Callers reach it only when
    their ``grad_checkpointing`` is on and they are not being scripted (TorchScript cannot take it)."""
    if not torch.is_grad_enabled():
        return module(x)
    if torch.compiler.is_compiling():  # the compiled graph recomputes pure ops only: buffers update once
        return torch.utils.checkpoint.checkpoint(module, x, use_reentrant=False)
    return torch.utils.checkpoint.checkpoint(
        module, x, use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), batchnorm_stats_frozen(module)))


def conv_bn_relu(in_chs: int, out_chs: int, kernel_size: int, stride: int = 1) -> List[nn.Module]:
    """conv (no bias) -> BN -> ReLU, as a list so callers keep the release's flat Sequential indices."""
    return [nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True)]


class ConvTokenizer(nn.Module):
    """Three 3x3 conv-BN-ReLU and a 3x3/2 max-pool: (B, in_chans, H, W) -> (B, C, H/4, W/4)."""
    __jit_unused_properties__ = ['first_conv']  # for the input check and weight loading, not scripted

    def __init__(self, in_chans: int = 3, embed_dim: int = 64):
        super().__init__()
        self.block = nn.Sequential(
            *conv_bn_relu(in_chans, embed_dim // 2, 3, stride=2),
            *conv_bn_relu(embed_dim // 2, embed_dim // 2, 3),
            *conv_bn_relu(embed_dim // 2, embed_dim, 3),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.grad_checkpointing = False

    @property
    def first_conv(self) -> nn.Conv2d:
        return self.block[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting() or not self.grad_checkpointing:
            return self.block(x)
        for start, stop in ((0, 3), (3, 6), (6, 10)):  # checkpoint units: conv-BN-ReLU (the last + pool)
            x = checkpointed(self.block[start:stop], x)
        return x


def conv_downsample(dim_in: int, dim_out: int) -> nn.Conv2d:
    """The release's downsampling: 3x3/2 conv, (B, C, H, W) -> (B, C', ceil(H/2), ceil(W/2))."""
    return nn.Conv2d(dim_in, dim_out, 3, stride=2, padding=1)


class ConvStage(nn.Module):
    """Residual 1x1-3x3-1x1 bottlenecks, then ``downsample(C, d0)``: (B, C, H, W) -> (B, d0, H/2, W/2).

    With ``num_blocks=0`` (the ablation's conv stage switched off) it is its downsampling alone."""

    def __init__(self, num_blocks: int, embed_dim_in: int, hidden_dim: int, embed_dim_out: int,
                 downsample: Callable[[int, int], nn.Module] = conv_downsample):
        super().__init__()
        self.conv_blocks = nn.ModuleList([
            nn.Sequential(
                *conv_bn_relu(embed_dim_in, hidden_dim, 1),
                *conv_bn_relu(hidden_dim, hidden_dim, 3),
                *conv_bn_relu(hidden_dim, embed_dim_in, 1),
            ) for _ in range(num_blocks)])
        self.downsample = downsample(embed_dim_in, embed_dim_out)  # built after the blocks, as released
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.conv_blocks:
            if not torch.jit.is_scripting() and self.grad_checkpointing:
                x = x + checkpointed(block, x)
            else:
                x = x + block(x)
        return self.downsample(x)


def nchw_view(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, H, W) view (no copy; channels_last strides when ``x`` is contiguous)."""
    return x.permute(0, 3, 1, 2)


def nhwc_view(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C) view (no copy; contiguous when ``x`` is channels_last)."""
    return x.permute(0, 2, 3, 1)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad a (B, C, H, W) map at the bottom and right to H and W divisible by ``multiple``."""
    return F.pad(x, [0, (-x.shape[3]) % multiple, 0, (-x.shape[2]) % multiple])


class PatchEmbed(nn.Module):
    """The ablation's tokenizer: each non-overlapping 4x4 patch mapped linearly to C channels, then
    LayerNorm: (B, in_chans, H, W) -> (B, C, ceil(H/4), ceil(W/4)). The input is zero-padded to a multiple
    of 4, so the output has the conv tokenizer's shape at every input size."""
    __jit_unused_properties__ = ['first_conv']

    def __init__(self, in_chans: int = 3, embed_dim: int = 64, patch_size: int = 4):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    @property
    def first_conv(self) -> nn.Conv2d:
        return self.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(pad_to_multiple(x, self.patch_size))
        return nchw_view(self.norm(nhwc_view(x)))


class PatchMerge(nn.Module):
    """The ablation's non-convolutional downsampling: each 2x2 neighbourhood concatenated (4C channels),
    LayerNorm, Linear without bias to C': (B, C, H, W) -> (B, C', ceil(H/2), ceil(W/2)) (odd sizes
    zero-padded, so shapes match the 3x3/2 conv's)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim_in)
        self.reduction = nn.Linear(4 * dim_in, dim_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nhwc_view(pad_to_multiple(x, 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return nchw_view(self.reduction(self.norm(x)))


def channel_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` over the last dim of a channels-last map: (B, H, W, C) -> (B, H, W, C').

    Eager on CPU this runs as a 1x1 convolution over the NCHW view (same weights, viewed (C', C, 1, 1); no
    copy): oneDNN's convolution kernels do these matrix products 10-30% faster than the BLAS matmul behind
    ``F.linear`` (fp32, ConvMLP-S's stages 0 and 1, forward and backward). With one thread and fewer than 16
    images ATen runs a 1x1 convolution by its own GEMM after a copy to NCHW; measured on an AVX2 CPU, ConvMLP-S
    at batch 1 ran as fast that way as by oneDNN's convolution or ``F.linear`` (within 10%). Elsewhere, under
    ``torch.compile`` (whose frozen inference graphs pack linears into oneDNN's own) and in ONNX export (a
    MatMul, not Transpose-Conv-Transpose: ONNX Runtime runs it faster and quantizes it as one product), it
    is ``F.linear``. A leaf for ``torch.fx`` (wrapped below): the choice is made on the real input when the
    graph runs."""
    if x.device.type != 'cpu' or x.dim() != 4 or torch.compiler.is_compiling():
        return F.linear(x, weight, bias)
    if not torch.jit.is_scripting():  # (TorchScript cannot compile the ONNX query: a branch it skips)
        if torch.onnx.is_in_onnx_export():
            return F.linear(x, weight, bias)
    return nhwc_view(F.conv2d(nchw_view(x), weight.view(weight.shape[0], weight.shape[1], 1, 1), bias))


torch.fx.wrap('channel_linear')


class Mlp(nn.Module):
    """Linear -> GELU -> Linear over the channels of a channels-last map: (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(channel_linear(x, self.fc1.weight, self.fc1.bias))
        return channel_linear(x, self.fc2.weight, self.fc2.bias)


class ConvMLPBlock(nn.Module):
    """MLP, depthwise 3x3 conv (no residual around it), MLP: (B, H, W, C) -> (B, H, W, C).

    ``connect=False`` (the ablation) drops the depthwise conv and its LayerNorm: two channel MLPs with
    their norms and residuals, nothing spatial."""

    def __init__(self, dim: int, mlp_ratio: float = 1., drop_path_rate: float = 0., connect: bool = True):
        super().__init__()
        hidden_dim = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.channel_mlp1 = Mlp(dim, hidden_dim)
        self.connect_norm = nn.LayerNorm(dim) if connect else nn.Identity()
        self.connect = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False) if connect else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp2 = Mlp(dim, hidden_dim)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.channel_mlp1(self.norm1(x)))
        x = nhwc_view(self.connect(nchw_view(self.connect_norm(x))))
        x = x + self.drop_path(self.channel_mlp2(self.norm2(x)))
        return x


class ConvDownsample(nn.Module):
    """The release's 3x3/2 conv between MLP stages (its own module, for the checkpoint's
    ``downsample_mlp.downsample`` keys): (B, C, H, W) -> (B, C', H/2, W/2)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.downsample = conv_downsample(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x)


class ConvMLPStage(nn.Module):
    """``num_blocks`` ConvMLP blocks, then an optional downsample: (B, C, H, W) -> (B, C', H', W').

    NCHW in and out (so module outputs are feature maps for hooks and fx extraction); the blocks and the
    downsample run on the channels-last view of the same memory."""

    def __init__(self, num_blocks: int, dim: int, dim_out: Optional[int], mlp_ratio: float,
                 drop_path_rate: float, connect: bool = True,
                 downsample: Callable[[int, int], nn.Module] = ConvDownsample):
        super().__init__()
        rates = torch.linspace(0, drop_path_rate, num_blocks, device='cpu').tolist()
        self.blocks = nn.ModuleList([ConvMLPBlock(dim, mlp_ratio, rate, connect) for rate in rates])
        # built after the blocks, as released (a seed then gives the release's random init)
        self.downsample_mlp = downsample(dim, dim_out) if dim_out is not None else nn.Identity()
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nhwc_view(x)
        for block in self.blocks:
            x = checkpointed(block, x) if not torch.jit.is_scripting() and self.grad_checkpointing else block(x)
        return self.downsample_mlp(nchw_view(x))


TOKENIZERS = {'conv': ConvTokenizer, 'patch': PatchEmbed}
# downsample switch -> (after the conv stage, between MLP stages); modules of the release's key layout
DOWNSAMPLES = {'conv': (conv_downsample, ConvDownsample), 'patch_merge': (PatchMerge, PatchMerge)}


class ConvMLP(nn.Module):
    """ConvMLP classifier / dense-prediction backbone.

    ``forward(x)`` with ``x`` of shape (B, in_chans, H, W), H and W >= 32 (any values, not only multiples
    of 32):
      * ``classifier_head=True``: logits (B, num_classes); (B, dims[-1]) pooled features if num_classes=0.
      * ``classifier_head=False``: as the release, the last stage's map channels-last, (B, H/32, W/32,
        dims[-1]), without norm; the four dense-prediction maps come from :meth:`forward_dense`.

    ``drop_rate`` is dropout before the classifier, ``drop_path_rate`` stochastic depth per stage (timm's
    names); ``in_chans`` the input channels (pretrained 3-channel weights are adapted on load).

    The paper's ablation, each switch defaulting to the release (whose state-dict keys it keeps):
      * ``tokenizer``: ``'conv'`` (three conv-BN-ReLU and a max-pool) or ``'patch'`` (:class:`PatchEmbed`);
      * ``conv_stage``: the conv bottlenecks on, or off (the tokenizer's map goes to the first MLP stage
        through the downsampling alone: strides and widths stay 4/8/16/32 and C/d0/d1/d2);
      * ``downsample``: ``'conv'`` (3x3/2 convs) or ``'patch_merge'`` (:class:`PatchMerge`), everywhere;
      * ``connect``: the depthwise 3x3 conv in each block, on or off.
    All four off is the Pure-MLP baseline (:data:`ABLATION`).
    """

    def __init__(
            self,
            blocks: Sequence[int],
            dims: Sequence[int],
            mlp_ratios: Sequence[float],
            channels: int = 64,
            n_conv_blocks: int = 3,
            num_classes: int = 1000,
            classifier_head: bool = True,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
            in_chans: int = 3,
            global_pool: str = 'avg',
            tokenizer: str = 'conv',
            conv_stage: bool = True,
            downsample: str = 'conv',
            connect: bool = True,
    ):
        super().__init__()
        for name, value, choices in (('tokenizer', tokenizer, TOKENIZERS), ('downsample', downsample, DOWNSAMPLES)):
            if value not in choices:
                raise ValueError(f'ConvMLP {name} must be one of {sorted(choices)}; got {value!r}')
        if in_chans < 1:
            raise ValueError(f'ConvMLP needs at least one input channel; got in_chans={in_chans}')
        if global_pool not in ('avg', ''):
            raise ValueError(f"ConvMLP supports global_pool 'avg' or '' (none); got {global_pool!r}")
        if not len(blocks) == len(dims) == len(mlp_ratios):
            raise ValueError(f'blocks, dims and mlp_ratios need one entry per stage; got '
                             f'{len(blocks)}, {len(dims)}, {len(mlp_ratios)}')
        self.dims = tuple(dims)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.classifier_head = classifier_head
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.drop_path_rate = drop_path_rate
        self.num_features = self.head_hidden_size = dims[-1]

        self.tokenizer = TOKENIZERS[tokenizer](in_chans, embed_dim=channels)
        stem_downsample, stage_downsample = DOWNSAMPLES[downsample]
        self.conv_stages = ConvStage(n_conv_blocks if conv_stage else 0, channels, dims[0], dims[0],
                                     stem_downsample)
        self.stages = nn.ModuleList([
            ConvMLPStage(blocks[i], dims[i], dims[i + 1] if i + 1 < len(dims) else None, mlp_ratios[i],
                         drop_path_rate, connect, stage_downsample)
            for i in range(len(blocks))])
        self.norm = nn.LayerNorm(dims[-1]) if classifier_head else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if classifier_head and num_classes > 0 else nn.Identity()
        # (name, channels, stride) of the maps forward_dense returns, as timm's feature_info
        self.feature_info = [
            dict(module='tokenizer', num_chs=channels, reduction=4),
            dict(module='conv_stages', num_chs=dims[0], reduction=8),
            dict(module='stages.0', num_chs=dims[1], reduction=16),
            dict(module=f'stages.{len(dims) - 1}', num_chs=dims[-1], reduction=2 ** (len(dims) + 2)),
        ]
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            nn.init.trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ---- timm model API -------------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r'^tokenizer|^conv_stages',
                    blocks=r'^stages\.(\d+)' if coarse else [(r'^stages\.(\d+)\.blocks\.(\d+)', None),
                                                              (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward instead of storing them: per conv-BN-ReLU of the tokenizer,
        per bottleneck of the conv stage, per ConvMLP block. Same gradients, far less training memory."""
        for part in (self.tokenizer, self.conv_stages, *self.stages):
            part.grad_checkpointing = enable

    def fuse(self, inplace: bool = False) -> 'ConvMLP':
        """Inference model with BatchNorm folded into the convs before it (see :mod:`src.fuse`); eval mode,
        same logits within float rounding. A copy unless ``inplace``."""
        from .fuse import fuse_model
        return fuse_model(self, inplace=inplace)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if not self.classifier_head:
            raise ValueError('this ConvMLP was built without classifier head (classifier_head=False)')
        if global_pool is not None:
            if global_pool not in ('avg', ''):
                raise ValueError(f"ConvMLP supports global_pool 'avg' or ''; got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(self._init_weights)

    def _stem(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if not torch.jit.is_scripting():
            _check_input(x, self.in_chans, self.tokenizer.first_conv.weight.dtype)
        # channels-last from the first conv on: the MLP stages then take NHWC views without a copy
        tokens = self.tokenizer(x.contiguous(memory_format=torch.channels_last))
        return tokens, self.conv_stages(tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> normed last-stage map (B, dims[-1], H/32, W/32), e.g. 7x7 at 224."""
        _, x = self._stem(x)
        for stage in self.stages:
            x = stage(x)
        return nchw_view(self.norm(nhwc_view(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) map from forward_features -> logits (B, num_classes), or pooled (B, C) (after the
        dropout, as timm)."""
        if self.global_pool == 'avg':
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    @torch.jit.export
    def forward_dense(self, x: torch.Tensor) -> List[torch.Tensor]:
        """(B, in_chans, H, W) -> four NCHW maps at strides 4, 8, 16, 32 with channels
        (C, dims[0], dims[1], dims[2]): tokenizer, conv stage, stage 0 after its downsample, last stage."""
        tokens, x = self._stem(x)
        outs = [tokens, x]
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == 0:
                outs.append(x)
        outs.append(x)
        return outs

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, Sequence[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's feature API over the four dense-prediction maps (indices 0..3, negatives allowed)."""
        if output_fmt != 'NCHW':
            raise ValueError(f"ConvMLP returns intermediates as 'NCHW'; got output_fmt={output_fmt!r}")
        take = _feature_indices(indices, len(self.feature_info))
        feats = self.forward_dense(x)
        final = nchw_view(self.norm(nhwc_view(feats[-1])))  # = forward_features(x)
        if norm:  # timm's convention: the final norm applies to the last map, once
            feats[-1] = final
        intermediates = [feats[i] for i in take]
        if intermediates_only:
            return intermediates
        return final, intermediates

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop what the requested feature maps do not need (norm and head here)."""
        take = _feature_indices(indices, len(self.feature_info))
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.classifier_head:  # the release's headless output: the last map, channels-last, no norm
            return nhwc_view(self.forward_features(x))
        return self.forward_head(self.forward_features(x))


def _feature_indices(indices: Optional[Union[int, Sequence[int]]], n: int) -> List[int]:
    """timm convention: None = all, int k = last k, sequence = those (negative from the end)."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f'ConvMLP has {n} feature maps; cannot take the last {indices}')
        return list(range(n - indices, n))
    take = []
    for i in indices:
        if not -n <= i < n:
            raise ValueError(f'ConvMLP feature index {i} out of range: valid are 0..{n - 1} (or negatives)')
        take.append(i % n)
    return take


ARCHS = {
    'convmlp_s': dict(blocks=(2, 4, 2), mlp_ratios=(2, 2, 2), dims=(128, 256, 512), channels=64, n_conv_blocks=2),
    'convmlp_m': dict(blocks=(3, 6, 3), mlp_ratios=(3, 3, 3), dims=(128, 256, 512), channels=64, n_conv_blocks=3),
    'convmlp_l': dict(blocks=(4, 8, 3), mlp_ratios=(3, 3, 3), dims=(192, 384, 768), channels=96, n_conv_blocks=3),
}


def _create(arch: str, pretrained: Union[bool, str], progress: bool, **kwargs) -> ConvMLP:
    model = ConvMLP(**ARCHS[arch], **kwargs)
    if pretrained:
        from .weights import load_pretrained
        load_pretrained(model, arch if pretrained is True else pretrained, progress=progress)
    return model


def convmlp_s(pretrained: Union[bool, str] = False, progress: bool = False, num_classes: int = 1000,
              classifier_head: bool = True, **kwargs) -> ConvMLP:
    """ConvMLP-S (9.0M params, 2.4G MACs at 224). ``pretrained``: True for the ImageNet-1k release,
    or a local path / URL of a checkpoint."""
    return _create('convmlp_s', pretrained, progress, num_classes=num_classes,
                   classifier_head=classifier_head, **kwargs)


def convmlp_m(pretrained: Union[bool, str] = False, progress: bool = False, num_classes: int = 1000,
              classifier_head: bool = True, **kwargs) -> ConvMLP:
    """ConvMLP-M (17.4M params, 3.9G MACs at 224); ``pretrained`` as for :func:`convmlp_s`."""
    return _create('convmlp_m', pretrained, progress, num_classes=num_classes,
                   classifier_head=classifier_head, **kwargs)


def convmlp_l(pretrained: Union[bool, str] = False, progress: bool = False, num_classes: int = 1000,
              classifier_head: bool = True, **kwargs) -> ConvMLP:
    """ConvMLP-L (42.7M params, 9.9G MACs at 224); ``pretrained`` as for :func:`convmlp_s`."""
    return _create('convmlp_l', pretrained, progress, num_classes=num_classes,
                   classifier_head=classifier_head, **kwargs)


# The paper's ablation, from the Pure-MLP baseline to ConvMLP: row -> switches of :class:`ConvMLP`, each
# row adding one step to the row before; the last step (+ depthwise conv) is ConvMLP itself. Reading of
# the text (README, "Ablation"): "conv stage" brings the conv tokenizer with it.
ABLATION = {
    'pure_mlp': dict(tokenizer='patch', conv_stage=False, downsample='patch_merge', connect=False),
    'conv_stage': dict(tokenizer='conv', conv_stage=True, downsample='patch_merge', connect=False),
    'conv_downsample': dict(tokenizer='conv', conv_stage=True, downsample='conv', connect=False),
}
ABLATION_TITLES = {'pure_mlp': 'Pure-MLP baseline', 'conv_stage': '+ conv stage',
                   'conv_downsample': '+ conv downsampling', '': '+ depthwise conv (ConvMLP)'}


def _ablation_factory(arch: str, row: str) -> Callable[..., ConvMLP]:
    """``{arch}_{row}(pretrained=False, progress=False, **kwargs)``: the ablation row ``row`` at the size of
    ``arch``; ``kwargs`` override any switch (or other argument) of :class:`ConvMLP`."""
    def factory(pretrained: Union[bool, str] = False, progress: bool = False, **kwargs) -> ConvMLP:
        if pretrained is True:
            raise ValueError(f'no released weights for {arch}_{row} (an ablation row): pass pretrained=PATH '
                             f'of your own checkpoint, or pretrained=False')
        return _create(arch, pretrained, progress, **{**ABLATION[row], **kwargs})

    factory.__name__ = factory.__qualname__ = f'{arch}_{row}'
    factory.__doc__ = (f'{ABLATION_TITLES[row]} at the size of {arch} (ablation row: '
                       f'{", ".join(f"{k}={v!r}" for k, v in ABLATION[row].items())}). ``pretrained``: a local '
                       f'path or URL of a checkpoint of this row; ``kwargs`` override any ConvMLP argument.')
    return factory


ABLATION_MODELS = {f'{arch}_{row}': _ablation_factory(arch, row) for arch in ARCHS for row in ABLATION}
globals().update(ABLATION_MODELS)
__all__ += list(ABLATION_MODELS)
