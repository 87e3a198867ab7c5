"""ConvMLP on OpenMMLab 2.0 (mmengine, mmdet 3, mmseg 1): the runtime behind ``detection/`` and
``segmentation/``. Importing this package imports nothing of OpenMMLab; its modules do.

    backbone      the ConvMLP backbone for mmdet / mmseg (``init_cfg``, the four maps), registered by
                  :mod:`src.detection` and :mod:`src.segmentation`
    run           ``main(task, mode, argv)`` of the train / test entry points
    config        the mmengine config prepared from the command line (data root, resume, AMP, CPU)
    checkpoints   reading run checkpoints and release files safely (``weights_only=True``), finding the
                  newest loadable one, converting mmdet 2.x / mmseg 0.x files
    safe_runner   crash-safe checkpoints and exact resume (Runner and CheckpointHook in place of mmengine's,
                  an epoch loop that resumes inside an epoch)
    preemption    SIGTERM / SIGUSR1: one checkpoint where the run stands, exit code 75
    cpu_amp       bf16 autocast optimizer wrapper for CPU training (mmengine's AmpOptimWrapper needs a GPU)
    inference     pictures of predictions on mmdet's / mmseg's inferencers
    demo          the command line of ``detection/demo.py`` and ``segmentation/demo.py``
"""

__all__ = ['require_openmmlab']


def require_openmmlab() -> None:
    """Raise :class:`~src.utils.errors.UsageError` saying how to install the OpenMMLab stack unless mmengine,
    mmcv (with its compiled ops), mmdet and mmseg import."""
    from ..utils.errors import UsageError
    try:
        import mmcv.ops  # noqa: F401  the compiled ops: a plain mmcv build lacks them
        import mmdet  # noqa: F401
        import mmengine  # noqa: F401
        import mmseg  # noqa: F401
    except ImportError as e:
        raise UsageError(f'the OpenMMLab stack is not installed in this environment ({e}): run `make install-mm` '
                         f'(builds mmcv 2.1.0 from source, about 17 min on 2 cores the first time)') from None
