"""Every fast path computes what the plain model computes (issue 6): BN folding, channels-last, compile,
gradient checkpointing, bf16 autocast; and the benchmark tool runs. Correctness only, no timing."""
import copy
import json
import subprocess
import sys

import pytest
import torch
from torch.profiler import profile

from conftest import ROOT, THREADS
from helpers import load_tool, randomize_norms
from src import convmlp_s
from src.utils import precision
from src.utils.threads import torch_threads
from src.perf.benchmark import ProductTimer, ReleaseForward, bf16_agreement, peak_tensor_bytes, step_flops
from src.convmlp import ConvMLP, channel_linear
from src.fuse import fuse_model


def tiny(**kw):
    return ConvMLP(blocks=(1, 2, 1), dims=(16, 32, 64), mlp_ratios=(2, 2, 2), channels=8, n_conv_blocks=2,
                   num_classes=7, **kw)


@pytest.fixture(scope='module')
def model_s():
    torch.manual_seed(0)
    return randomize_norms(convmlp_s()).eval()


def test_fused_logits_match_unfused(model_s):
    x = torch.randn(2, 3, 96, 64)
    fused = model_s.fuse()
    with torch.no_grad():
        ref, out = model_s(x), fused(x)
    assert (out - ref).abs().max() < 1e-4
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model_s.modules())  # a copy: original intact
    sd = fused.state_dict()  # folded BN entries gone, every other name as in the checkpoint
    assert 'tokenizer.block.1.weight' not in sd and 'tokenizer.block.0.bias' in sd
    assert set(sd) - {k for k in sd if k.endswith('.bias')} <= set(model_s.state_dict())


def test_fused_dense_features_match():
    torch.manual_seed(0)
    backbone = randomize_norms(convmlp_s(classifier_head=False)).eval()
    fused = fuse_model(backbone)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for ref, out in zip(backbone.forward_dense(x), fused.forward_dense(x)):
            assert ref.shape == out.shape and (out - ref).abs().max() < 1e-4


def test_release_style_baseline_computes_the_same(model_s):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ReleaseForward(model_s)(x), model_s(x), atol=1e-5)


@pytest.mark.parametrize('layout', ['nhwc', 'nchw memory', 'one pixel'])
def test_channel_linear_as_1x1_conv_matches_linear(layout):
    """On CPU the channel MLPs' linears run as 1x1 convs: same values and gradients as nn.Linear, whatever
    the input's memory layout, and in bf16 autocast."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 24)
    x = {'nhwc': torch.randn(2, 5, 7, 16), 'one pixel': torch.randn(1, 1, 1, 16),
         'nchw memory': torch.randn(2, 16, 5, 7).permute(0, 2, 3, 1)}[layout].requires_grad_()
    grad = torch.randn(*x.shape[:3], 24)
    y = channel_linear(x, linear.weight, linear.bias)
    (dx, dw, db) = torch.autograd.grad(y, (x, linear.weight, linear.bias), grad)
    y_ref = linear(x)
    (dx_ref, dw_ref, db_ref) = torch.autograd.grad(y_ref, (x, linear.weight, linear.bias), grad)
    assert y.shape == y_ref.shape and torch.allclose(y, y_ref, atol=1e-5)
    for got, ref in ((dx, dx_ref), (dw, dw_ref), (db, db_ref)):
        assert torch.allclose(got, ref, atol=1e-4)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y16 = channel_linear(x, linear.weight, linear.bias)
    assert y16.dtype == torch.bfloat16 and torch.allclose(y16.float(), y_ref, atol=0.05)


@pytest.mark.parametrize('threads', [2, 1])
def test_channels_last_matches_contiguous_without_layout_copies(model_s, threads):
    """With 2 threads no layout copy; with 1 thread and fewer than 16 images ATen runs each 1x1 convolution
    (the 32 channel-MLP linears) by its own GEMM after a copy to NCHW, and nothing else copies."""
    x = torch.randn(2, 3, 64, 64)
    cl = copy.deepcopy(model_s).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch_threads(threads):  # ATen picks the 1x1 convolution's kernel by it
        ref = model_s(x)
        assert torch.allclose(cl(x_cl), ref, atol=1e-5)
        with profile() as prof:
            cl(x_cl)
    copies = [e for e in prof.events() if e.name in ('aten::clone', 'aten::contiguous', 'aten::copy_')]
    # the only copies left: addmm's bias broadcast into its output, and scalars
    parents = [e.cpu_parent.name if e.cpu_parent is not None else None for e in copies]
    layout = [p for p in parents if p not in ('aten::addmm', 'aten::_to_copy')]
    assert layout == ([] if threads > 1 else ['aten::_slow_conv2d_forward'] * 32)
    dense = cl.forward_dense(x_cl)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in dense)


@pytest.mark.parametrize('drop_path_rate', [0., 0.3])
def test_checkpointed_gradients_and_bn_stats_equal_plain(drop_path_rate):
    torch.manual_seed(0)
    plain = tiny(drop_path_rate=drop_path_rate).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    assert ckpt.tokenizer.grad_checkpointing and ckpt.conv_stages.grad_checkpointing
    x = torch.randn(3, 3, 48, 40)
    for net in (plain, ckpt):
        torch.manual_seed(1)  # same drop-path masks
        net(x).logsumexp(1).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name
    for (name, a), b in zip(plain.named_buffers(), ckpt.buffers()):
        assert torch.equal(a, b), name  # running stats updated once, not again during recomputation


def test_checkpointing_keeps_far_fewer_activations():
    """Bytes autograd keeps for backward (checkpointing keeps only each unit's input)."""
    torch.manual_seed(0)
    model = convmlp_s().train()
    x = torch.randn(2, 3, 96, 96)

    def saved_bytes():
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
        return total[0]
    plain = saved_bytes()
    model.set_grad_checkpointing()
    assert saved_bytes() < 0.2 * plain


def test_bf16_autocast_top1_agreement():
    agree = bf16_agreement('convmlp_s', n=64, res=32)
    assert agree['probe_head_fp32_accuracy'] > 0.9  # the probe is a real classifier
    assert agree['probe_head'] >= 0.99


def test_bf16_autocast_training_step():
    torch.manual_seed(0)
    model = tiny().to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
    assert logits.dtype == torch.bfloat16
    loss.backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())
    before = model.head.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.head.weight)


def test_no_graph_breaks_in_forward():
    model = tiny().eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch._dynamo.explain(model)(x).graph_break_count == 0
    model.train().set_grad_checkpointing()
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


@pytest.mark.slow
def test_compiled_matches_eager():
    try:
        import torch._inductor  # noqa: F401
        from torch._inductor.cpp_builder import get_cpp_compiler
        get_cpp_compiler()
    except Exception as e:  # no C++ compiler: inductor cannot build CPU kernels here
        pytest.skip(f'torch.compile unavailable: {e}')
    torch.manual_seed(0)
    model = randomize_norms(tiny()).eval().fuse().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 48)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-4)


RSS_AFTER_FREE = """
import sys, torch
from src.utils.malloc import keep_freed_memory
applied = keep_freed_memory()
def rss():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) // 1024
x = torch.ones(64 * 2 ** 18)  # 64 MiB, touched
before_free = rss()
del x
print(applied, before_free - rss())
"""


@pytest.mark.parametrize('setting', ['keep', 'system'])
def test_keep_freed_memory_keeps_a_freed_tensor_resident(setting):
    """With glibc's defaults a freed 64 MiB tensor goes back to the kernel (and is page-faulted in again on
    the next step); kept, it stays for reuse."""
    env = dict(__import__('os').environ, CONVMLP_MALLOC=setting)
    out = subprocess.run([sys.executable, '-c', RSS_AFTER_FREE], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    applied, released_mib = out[0] == 'True', int(out[1])
    if setting == 'keep':
        assert applied and released_mib < 8
    else:
        assert not applied and released_mib > 56


def test_keep_freed_memory_rejects_unknown_setting(monkeypatch):
    from src.utils.malloc import keep_freed_memory
    monkeypatch.setenv('CONVMLP_MALLOC', 'jemalloc')
    with pytest.raises(ValueError, match="CONVMLP_MALLOC='jemalloc': use 'keep'"):
        keep_freed_memory()


def test_peak_tensor_bytes_counts_tensors_alive_together():
    mib = 2 ** 20

    def together():
        a = torch.empty(8 * mib, dtype=torch.uint8)
        b = torch.empty(4 * mib, dtype=torch.uint8)
        return a.numel() + b.numel()

    def one_after_another():
        for n in (8, 4):
            torch.empty(n * mib, dtype=torch.uint8)

    assert 12 * mib <= peak_tensor_bytes(together) < 13 * mib
    assert 8 * mib <= peak_tensor_bytes(one_after_another) < 9 * mib


def test_training_flops_are_forward_plus_two_gradients():
    """Backward computes the input and the weight gradient of every conv, each as many multiply-adds as the
    forward, except the stem's first conv, whose input (the image) needs no gradient. torch's own counter
    counts the depthwise convs' weight gradients once per channel group; ours must not."""
    forward = step_flops('convmlp_s', 64, 'infer')
    first_conv = 2 * 32 * 3 * 3 * 3 * 32 * 32  # 3 -> 32 channels, 3x3, stride 2: 32x32 outputs at 64 px
    assert step_flops('convmlp_s', 64, 'train') == pytest.approx(3 * forward - first_conv, rel=1e-3)


def test_product_timer_times_every_product_of_a_training_step_and_changes_nothing():
    """The floor rows rest on this: every convolution (forward and backward) and matrix multiply of a step is
    seen and timed, nothing else is, and the step computes what it computes without the timer."""
    torch.manual_seed(0)
    model = tiny().to(memory_format=torch.channels_last).train()
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)

    def gradients():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # drop path
        model(x).logsumexp(1).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = gradients()
    with ProductTimer() as timer:
        timed = gradients()
    assert all(torch.equal(a, b) for a, b in zip(plain, timed))
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    mlp_linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules()) - 1  # eager CPU: as 1x1 convs
    names = [name for name, _ in timer.ops]
    assert names.count('aten.convolution.default') == convs + mlp_linears
    assert names.count('aten.convolution_backward.default') == convs + mlp_linears
    assert names.count('aten.addmm.default') == 1 and names.count('aten.mm.default') == 2  # head, its grads
    assert len(names) == 2 * (convs + mlp_linears) + 3
    assert timer.seconds > 0 and all(seconds > 0 for _, seconds in timer.ops)


def test_benchmark_tool_smoke(tmp_path):
    cmd = [sys.executable, 'tools/benchmark.py', '--modes', 'infer', '--dtypes', 'fp32', '--compile', 'off',
           '--fuse', 'only', '--res', '32', '--batch', '1', '--iters', '1', '--warmup', '0', '--rounds', '1',
           '--sweep-res', '--sweep-batch', '--agreement', '0', '--ckpt-batch', '0', '--int8-keep-fp32', 'first_conv',
           '--peak-repeats', '1', '--threads', str(THREADS),
           '--no-malloc-rows',  # their rows: test_benchmark_matrix_rows
           '--out', str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / 'benchmark.json').read_text())
    labels = [r['label'] for r in report['rows']]
    assert labels == ['baseline (release)', 'fp32 eager fused', 'fp32 onnxruntime fused',
                      'int8 onnxruntime fused (first_conv in fp32)', 'int8 pt2e compiled fused (first_conv in fp32)',
                      'fp32 fused matrix products alone (floor)']
    assert report['rows'][0]['x_baseline'] == 1.0
    assert [r['malloc_kept'] for r in report['rows']] == [False, True, True, True, True, True]
    *steps, onnx, int8, pt2e, floor = report['rows']
    assert all(r['images_per_s'] > 0 and r['gflops'] > 0 and r['tensor_mib'] > 0 and r['rss_mib'] == r['rss_mib']
               for r in steps)
    assert all(r['loadavg'] >= 0 for r in report['rows'])
    assert onnx['images_per_s'] > 0 and onnx['max_abs_diff'] < 1e-4 and onnx['top1_agreement'] == 1.0
    assert int8['images_per_s'] > 0 and int8['int8_nodes'] == 52 and len(int8['fp32_nodes']) == 1  # 19 convs, 32 MLP linears, head
    assert pt2e['images_per_s'] > 0 and pt2e['int8_nodes'] == 52 and pt2e['fp32_nodes'] == ['tokenizer.block.0']
    assert pt2e['top1_agreement'] == 1.0 and pt2e['compile_s'] > 0  # compiled in the build, not in a timed step
    speedup, pt2e_speedup = report['int8_speedups']
    assert pt2e_speedup['label'] == pt2e['label'] and pt2e_speedup['fp32_label'] == speedup['fp32_label']
    faster = max((r for r in report['rows'] if r['label'] in ('fp32 eager fused', 'fp32 onnxruntime fused')),
                 key=lambda r: r['images_per_s'])
    assert speedup['fp32_label'] == faster['label'] and speedup['speedup'] == int8['images_per_s'] / faster['images_per_s']
    assert report['cpu_isa'] == precision.cpu_isa() and report['emulated_dtypes'] == []  # fp32 only
    assert report['cpu_int8'] == precision.cpu_int8()
    assert floor['images_per_s'] > 0 and floor['gflops'] > 0
    assert floor['products_per_step'] == 52 + 1  # S: 20 convs, 32 channel-MLP linears (1x1 convs), head
    assert report['matmul_peak_gflops']['fp32'] > 0
    table = (tmp_path / 'benchmark.md').read_text()
    assert '| convmlp_s | infer | fp32 eager fused | 1 | 32 |' in table
    assert '| convmlp_s | infer | fp32 fused matrix products alone (floor) | 1 | 32 |' in table
    assert table.startswith(f'CPU: {precision.cpu_isa()}; {precision.cpu_int8()}.')
    assert 'fp32 onnxruntime fused (ONNX Runtime 1.' in table and 'top-1 agreement 100.0%' in table
    assert f"int8 onnxruntime fused (first_conv in fp32), batch 1 at 32 px: {int8['images_per_s']:.2f} img/s, " \
           f"{speedup['speedup']:.2f}x the faster fp32 path ({faster['label']}" in table
    # each inference row's share of its step in products, and what it bounds: the int8 step with all else free
    assert 'products_share' not in steps[0]  # the release's forward is not profiled
    assert all(0 < r['products_share'] <= 1 for r in (steps[1], onnx, int8, pt2e))
    for u, row in ((speedup, int8), (pt2e_speedup, pt2e)):
        int8_products = row['products_share'] * row['best_sec']
        assert u['ceiling'] == pytest.approx(faster['best_sec'] / int8_products) and u['ceiling'] >= u['speedup']
        assert u['products_speedup'] == pytest.approx(faster['products_share'] * faster['best_sec'] / int8_products)
        assert f"its products alone {u['products_speedup']:.2f}x the fp32 path's, ceiling {u['ceiling']:.2f}x" in table


def test_products_share_counts_products_and_nothing_else():
    """The share of a step in matrix products, from PyTorch's profiler and from ONNX Runtime's: all but the
    framework's own overhead for a chain of linears, none for a chain of GELUs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from src.perf.product_share import onnx_products_share, torch_products_share
    torch.manual_seed(0)
    x = torch.randn(512, 256)
    linears = torch.nn.Sequential(*[torch.nn.Linear(256, 256, bias=False) for _ in range(4)])
    linears(x)  # (the benchmark profiles after its timed steps)
    assert torch_products_share(lambda: linears(x)) > 0.9
    assert torch_products_share(lambda: torch.nn.functional.gelu(torch.nn.functional.gelu(x))) == 0

    def graph(op_types):
        nodes, inits = [], []
        for i, op in enumerate(op_types):
            inputs = [f't{i}'] + ([f'w{i}'] if op == 'MatMul' else [])
            nodes.append(helper.make_node(op, inputs, [f't{i + 1}']))
            if op == 'MatMul':
                inits.append(numpy_helper.from_array(torch.randn(256, 256).numpy(), f'w{i}'))
        g = helper.make_graph(nodes, 'g', [helper.make_tensor_value_info('t0', TensorProto.FLOAT, [512, 256])],
                              [helper.make_tensor_value_info(f't{len(op_types)}', TensorProto.FLOAT, [512, 256])],
                              inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)]).SerializeToString()
    feed = {'t0': x.numpy()}
    assert onnx_products_share(graph(['MatMul'] * 4), feed, threads=1) == 1
    assert onnx_products_share(graph(['Relu', 'Sigmoid']), feed, threads=1) == 0
    mixed = onnx_products_share(graph(['MatMul', 'Sigmoid', 'MatMul', 'Sigmoid']), feed, threads=1)
    assert 0 < mixed < 1
    assert onnx.load_from_string(graph(['MatMul'])).graph.node[0].op_type == 'MatMul'


def test_benchmark_matrix_rows():
    """The rows of a benchmark run, in order: the allocator rows beside the baseline and the fast path (the
    smoke run above leaves them out to save two processes), ONNX Runtime fp32 and int8, PT2E's int8 as compiled by
    default and with max-autotune, the floor; max-autotune is a setting of the pt2e path only."""
    from src.perf import benchmark as bench
    rows = bench.matrix(['convmlp_s'], ['infer'], ['fp32'], [False], [True], 1, 32, int8_keep_fp32=['first_conv'],
                        int8_backends=['onnxruntime', 'pt2e', 'pt2e-max-autotune'])
    assert [(r.label, r.malloc) for r in rows] == [
        ('baseline (release)', 'system'), ('baseline (release) + keep malloc', 'keep'),
        ('fp32 eager fused system malloc', 'system'), ('fp32 eager fused', 'keep'),
        ('fp32 onnxruntime fused', 'keep'), ('int8 onnxruntime fused (first_conv in fp32)', 'keep'),
        ('int8 pt2e compiled fused (first_conv in fp32)', 'keep'),
        ('int8 pt2e compiled max-autotune fused (first_conv in fp32)', 'keep'),
        ('fp32 fused matrix products alone (floor)', 'keep')]
    assert [r.max_autotune for r in rows if r.path == 'pt2e'] == [False, True]
    with pytest.raises(ValueError, match='max_autotune is a setting of the pt2e path'):
        bench.Config(path='onnx', dtype='int8', max_autotune=True)


def test_benchmark_rounds_keep_each_rows_fastest_round(monkeypatch):
    """--rounds N measures every row N times round-robin and keeps each row's fastest round (an error only
    where no round succeeded)."""
    from src.perf import benchmark as bench
    tool = load_tool('benchmark')
    a, b, c = (bench.Config(batch=n) for n in (1, 2, 3))
    times = {a: [3.0, 1.0, 2.0], b: [None, 5.0, 4.0], c: [None, None, None]}
    order = []

    def measure(cfg, **_):
        order.append(cfg)
        t = times[cfg].pop(0)
        return {'error': 'failed'} if t is None else {'best_sec': t, 'images_per_s': 1 / t, 'tensor_mib': 1.0}
    monkeypatch.setattr(bench, 'measure', measure)
    rows = tool.run_all([a, b, c], type('Args', (), dict(rounds=3, iters=1, warmup=0, threads=1)))
    assert order == [a, b, c] * 3
    assert [r.get('best_sec', r.get('error')) for r in rows] == [1.0, 4.0, 'failed']


def test_benchmark_tool_rejects_bad_flags():
    proc = subprocess.run([sys.executable, 'tools/benchmark.py', '--res', '16'], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and '>= 32' in proc.stderr and 'Traceback' not in proc.stderr
