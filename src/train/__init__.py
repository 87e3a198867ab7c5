"""Image-classification training and evaluation built from timm's library parts.

``classification.py`` (repo root) is the command line; the pieces live here, one concern per module:

    config      command line + YAML defaults, input checks (bad input: ``UsageError``, one line, exit code 2)
    data        datasets (image folders, timm names, ``tv-NAME`` torchvision), deterministic sampler,
                per-sample seeded augmentation, unreadable-image skipping
    state       training checkpoints (atomic, weights-only loadable), exact resume, weight loading
    engine      one training epoch, evaluation (DDP aware)
    outputs     run folder, log, summary.csv, curves plot, args.yaml
    run         ``main(argv)``: the run in steps (data, run folder, :class:`~src.train.run.Training`)
    digits      scikit-learn's handwritten digits written out as an ImageFolder (the demo's data)
"""
