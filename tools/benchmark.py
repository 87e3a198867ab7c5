"""Benchmark ConvMLP's execution paths against the release's straightforward forward.

    python tools/benchmark.py                                  # S, batch 16, 224 px, 2 threads, full matrix
    python tools/benchmark.py --models s m l --iters 10        # all variants
    python tools/benchmark.py --device cuda --dtypes fp32 bf16 fp16 --threads 1   # same on a GPU

Per row: images/s (best of --iters timed steps after --warmup), the ratio to the baseline row (the release's
forward with glibc's default malloc) of the same model/step/batch/resolution, peak memory as tensors and as
resident set size (methods: src/perf/benchmark.py docstring), achieved GFLOP/s and its share of the machine's
measured matmul peak in the row's dtype. On CPU two more rows per step separate the allocator's share
(src/utils/malloc.py) from the rest: the baseline with kept freed memory, the fp32 fast path with glibc's default.
The "matrix products alone (floor)" rows count only the time the fast path's step spends in convolutions
and matrix multiplies: their ratio to the baseline is the most that faster elementwise work could reach.
The "onnxruntime" row runs the exported ONNX model (src/deploy/export.py) under ONNX Runtime on the same batch, with
its parity to the eager model (max abs difference of the logits, top-1 agreement) below the table; the "int8
onnxruntime" rows run it quantized as tools/quantize.py does (one row per --int8-keep-fp32 group), the "int8 pt2e
compiled" rows the model quantized by PT2E and compiled by inductor as tools/quantize.py --backend pt2e does
(compilation untimed; "max-autotune" with inductor's C++ int8 GEMMs where they time faster), and below the
table each int8 row's speed-up over the faster fp32 inference path of the run (eager fused or ONNX Runtime).
The output starts with the CPU's instruction set and its int8 instructions (VNNI, AMX); rows in a dtype the CPU
only emulates (bf16 without AVX512-BF16 / AMX) are marked "emulated". Every row gives the load average when it
was timed: on a shared machine compare rows of one run only.
Writes OUT/benchmark.{md,json,png}: the table, everything measured, and the plot of throughput and memory
against resolution and batch size.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.deploy.quantize import KEEP_FP32_ORDER  # noqa: E402
from src.perf import benchmark as bench  # noqa: E402
from src.utils import precision  # noqa: E402
from src.utils.shutdown import exit_process  # noqa: E402

MODELS = {'s': 'convmlp_s', 'm': 'convmlp_m', 'l': 'convmlp_l'}
BOTH = {'both': [False, True], 'off': [False], 'only': [True]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', nargs='+', default=['s'], choices=sorted(MODELS))
    p.add_argument('--modes', nargs='+', default=['infer', 'train'], choices=['infer', 'train'])
    p.add_argument('--dtypes', nargs='+', default=['fp32', 'bf16'], choices=sorted(bench.DTYPES))
    p.add_argument('--compile', default='both', choices=sorted(BOTH), help='torch.compile rows')
    p.add_argument('--fuse', default='both', choices=sorted(BOTH), help='BatchNorm-folded inference rows')
    p.add_argument('--malloc-rows', action=argparse.BooleanOptionalAction, default=True,
                   help='CPU: rows that swap the malloc setting of the baseline and of the fp32 fast path')
    p.add_argument('--onnx-rows', action=argparse.BooleanOptionalAction, default=True,
                   help='CPU: a row with the exported ONNX model under ONNX Runtime, and its parity with eager')
    p.add_argument('--int8-keep-fp32', nargs='*', default=['first_conv', 'tokenizer'], choices=KEEP_FP32_ORDER,
                   metavar='GROUP', help='CPU, with the onnx rows: an int8 ONNX Runtime row per group of convolutions '
                   f'left in fp32 ({", ".join(KEEP_FP32_ORDER)}; default first_conv tokenizer; none given: no int8 row)')
    p.add_argument('--int8-backends', nargs='+', default=['onnxruntime', 'pt2e'], choices=list(bench.INT8_BACKENDS),
                   help='CPU, with the onnx rows: the int8 paths timed for each --int8-keep-fp32 group (default '
                        "onnxruntime pt2e: ONNX Runtime's int8 model, and PT2E compiled by inductor as "
                        "tools/quantize.py --backend pt2e; pt2e-max-autotune: the same compiled with inductor's "
                        'max-autotune, as tools/predict.py --compile --max-autotune runs it)')
    p.add_argument('--floor-rows', action=argparse.BooleanOptionalAction, default=True,
                   help="rows with the time of the fast path's matrix products alone (timed inside its step): "
                        'the most any change to the non-product work could give')
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--res', type=int, default=224)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--iters', type=int, default=5, help='timed steps per row')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps first (compilation happens here)')
    p.add_argument('--rounds', type=int, default=1,
                   help='measure all rows this many times, interleaved, and keep the best of each')
    p.add_argument('--peak-repeats', type=int, default=10,
                   help='timed tries of each matrix product of the matmul peak (measured at the start and the end)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--ckpt-batch', type=int, default=32,
                   help='batch of the gradient-checkpointing memory rows (0: skip)')
    p.add_argument('--sweep-res', type=int, nargs='*', default=[224, 384, 512, 768, 1024])
    p.add_argument('--sweep-res-batch', type=int, default=4, help='batch size of the resolution sweep')
    p.add_argument('--sweep-batch', type=int, nargs='*', default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument('--agreement', type=int, default=256,
                   help='inputs for the bf16-vs-fp32 top-1 agreement check (0: skip)')
    p.add_argument('--out', type=Path, default=Path('work_dirs/benchmark'))
    args = p.parse_args(argv)
    for name in ('batch', 'res', 'threads', 'iters', 'rounds', 'peak_repeats'):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.res < 32 or any(r < 32 for r in args.sweep_res):
        p.error('resolutions must be >= 32 px (ConvMLP input minimum)')
    if args.device.startswith('cuda'):
        import torch
        if not torch.cuda.is_available():
            p.error(f'--device {args.device}: no CUDA device here; use --device cpu')
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_all(configs, args):
    """Measure every config, ``--rounds`` times round-robin; keep each config's fastest round (on a shared
    machine, interleaving spreads load changes over all rows instead of skewing some)."""
    best = {}
    for rnd in range(1, args.rounds + 1):
        for i, cfg in enumerate(configs, 1):
            t = time.time()
            r = bench.measure(cfg, iters=args.iters, warmup=args.warmup, threads=args.threads)
            if cfg not in best or 'error' in best[cfg] or ('error' not in r and
                                                            r['best_sec'] < best[cfg]['best_sec']):
                best[cfg] = r
            what = r['error'] if 'error' in r else f"{r['images_per_s']:.2f} img/s" + (
                f", {r['tensor_mib']:.0f} MiB tensors" if r['tensor_mib'] == r['tensor_mib'] else '')
            load = f", load {r['loadavg']:.1f}" if 'loadavg' in r else ''
            log(f'[round {rnd}, {i}/{len(configs)}] {cfg.model} {cfg.mode} {cfg.label} b{cfg.batch} '
                f'{cfg.res}px: {what} ({time.time() - t:.0f}s{load})')
    return [best[cfg] for cfg in configs]


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    models = [MODELS[m] for m in args.models]
    load = Path('/proc/loadavg').read_text().split()[:3] if Path('/proc/loadavg').exists() else []
    peak_dtypes = sorted({'fp32', *args.dtypes} - ({'fp16'} if args.device == 'cpu' else set()))

    def measure_peaks():
        return {d: bench.matmul_peak_gflops(d, args.threads, device=args.device, repeats=args.peak_repeats)
                for d in peak_dtypes}
    cpu = f'{precision.cpu_isa()}; {precision.cpu_int8()}'
    emulated = [d for d in args.dtypes if args.device == 'cpu' and not precision.cpu_native(bench.DTYPES[d])]
    log(f'CPU: {cpu}' + (f"; {', '.join(emulated)} emulated here (slow)" if emulated else ''))
    peaks = measure_peaks()
    log('matmul peak GFLOP/s: ' + ', '.join(f'{d} {v:.0f}' for d, v in peaks.items()))

    configs = bench.matrix(models, args.modes, args.dtypes, BOTH[args.compile], BOTH[args.fuse],
                           args.batch, args.res, args.device, args.malloc_rows and args.device == 'cpu',
                           args.floor_rows, args.onnx_rows, args.int8_keep_fp32, args.int8_backends)
    if args.ckpt_batch and 'train' in args.modes:
        configs += bench.checkpointing_configs(models[0], args.ckpt_batch, args.res, args.device)
    main_rows = run_all(configs, args)
    bench.annotate(main_rows, peaks)
    (args.out / 'benchmark.json').write_text(json.dumps(dict(matmul_peak_gflops=peaks, rows=main_rows), indent=1))

    templates = [bench.Config(path='baseline', device=args.device),
                 bench.Config(fused=True, device=args.device)]
    templates += [bench.Config(dtype=d, fused=True, device=args.device) for d in args.dtypes if d != 'fp32']
    sweep = bench.sweep_configs(models[0], templates, args.sweep_res, args.sweep_batch, args.sweep_res_batch)
    sweep_rows = run_all(sweep, args) if sweep else []
    # the peak again at the end, keeping the higher: one disturbed measurement must not skew every row
    peaks = {d: max(v, peaks[d]) for d, v in measure_peaks().items()}
    bench.annotate(main_rows, peaks)
    bench.annotate(sweep_rows, peaks)
    res_rows = [r for r in sweep_rows if r['config']['batch'] == args.sweep_res_batch]
    batch_rows = [r for r in sweep_rows if r['config']['res'] == 224]
    lin = bench.linearity(res_rows)

    agreement = bench.bf16_agreement(models[0], n=args.agreement, threads=args.threads) \
        if args.agreement and 'bf16' in args.dtypes and args.device == 'cpu' else None

    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                            cwd=bench.ROOT).stdout.strip()
    speedups = bench.int8_speedups(main_rows)
    report = dict(args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  commit=commit, cpu_isa=precision.cpu_isa(), cpu_int8=precision.cpu_int8(), emulated_dtypes=emulated,
                  loadavg_at_start=load, loadavg_at_end=Path('/proc/loadavg').read_text().split()[:3] if load else [],
                  matmul_peak_gflops=peaks, rows=main_rows, sweep=sweep_rows, linearity=lin,
                  bf16_top1_agreement=agreement, int8_speedups=speedups)
    (args.out / 'benchmark.json').write_text(json.dumps(report, indent=1))

    lines = [f'CPU: {cpu}. Machine load (1/5/15 min) at start {" ".join(load)}, at end '
             f'{" ".join(report["loadavg_at_end"])}; {args.threads} threads; matmul peak '
             + ', '.join(f'{d} {v:.0f} GFLOP/s' for d, v in peaks.items()),
             '', bench.markdown_table(main_rows, emulated), '']
    lines += [f"{r['config']['model']} {r['label']} (ONNX Runtime {r['onnxruntime']}) against the eager fp32 model on "
              f"the same batch ({r['config']['batch']} at {r['config']['res']} px): max abs diff of logits "
              f"{r['max_abs_diff']:.2e}, top-1 agreement {100 * r['top1_agreement']:.1f}%"
              for r in main_rows if r['config']['path'] == 'onnx' and r['config']['dtype'] == 'fp32' and 'error' not in r]
    lines += [f"{u['model']} {u['label']}, batch {u['batch']} at {u['res']} px: {u['images_per_s']:.2f} img/s, "
              f"{u['speedup']:.2f}x the faster fp32 path ({u['fp32_label']}, {u['fp32_images_per_s']:.2f} img/s; "
              f"load {u['loadavg'][0]:.1f} and {u['loadavg'][1]:.1f}); per CPU-second {u['cpu_speedup']:.2f}x "
              f"({u['cpu_fp32_label']}); {precision.cpu_int8()}"
              + (f"; its products alone {u['products_speedup']:.2f}x the fp32 path's, ceiling {u['ceiling']:.2f}x if "
                 f"nothing else took time" if 'ceiling' in u else '') for u in speedups]
    if speedups:
        lines.append('(int8 rows: random weights calibrated on the timed batch: their speed is real, their parity '
                     'with fp32 is not an accuracy: tools/quantize.py measures that on held-out images)')
    if sweep_rows:
        lines += ['', f'Sweeps ({models[0]}; resolution at batch {args.sweep_res_batch}, batch at 224 px):', '',
                  bench.markdown_table(sweep_rows, emulated), '',
                  'Seconds per image per pixel relative to the smallest resolution (1.00 = linear in pixels):']
        lines += [f'- {label}: ' + ', '.join(f'{r}px {v:.2f}' for r, v in vals.items()) for label, vals in lin.items()]
        bench.plot_sweeps(res_rows, batch_rows, args.out / 'benchmark.png',
                          f'{models[0]}, {args.threads} threads, {args.device}')
    if agreement:
        lines += ['', f'bf16 vs fp32 top-1 agreement ({args.agreement} digits images): ' +
                  ', '.join(f'{k} {v:.4f}' for k, v in agreement.items())]
    ckpt = [r for r in main_rows if r['config']['mode'] == 'train' and r['config']['batch'] == args.ckpt_batch
            and r['config']['path'] == 'fast' and r['config']['dtype'] == 'fp32' and not r['config']['compiled']
            and r['config']['malloc'] == 'keep' and 'error' not in r]
    if args.ckpt_batch and len(ckpt) >= 2:
        plain = next(r for r in ckpt if not r['config']['checkpointing'])
        saved = next(r for r in ckpt if r['config']['checkpointing'])
        cut = {k: 1 - saved[k] / plain[k] for k in ('tensor_mib', 'rss_mib')}
        report['checkpointing_memory_cut'] = cut
        lines += ['', f'Gradient checkpointing, training step at batch {args.ckpt_batch}: peak tensor memory '
                  f"{plain['tensor_mib']:.0f} -> {saved['tensor_mib']:.0f} MiB ({100 * cut['tensor_mib']:.0f}% less), "
                  f"peak RSS {plain['rss_mib']:.0f} -> {saved['rss_mib']:.0f} MiB ({100 * cut['rss_mib']:.0f}% less)"]
        (args.out / 'benchmark.json').write_text(json.dumps(report, indent=1))
    text = '\n'.join(lines)
    (args.out / 'benchmark.md').write_text(text + '\n')
    print(text)
    log(f'wrote {args.out}/benchmark.md, benchmark.json' + (', benchmark.png' if sweep_rows else ''))
    return 1 if any('error' in r for r in main_rows + sweep_rows) else 0


if __name__ == '__main__':
    exit_process(main())
