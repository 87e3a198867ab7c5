"""The paper's experiments in miniature, runnable on a CPU with nothing downloaded.

    shapes      generated scenes of coloured shapes (COCO and ADE20K layout) and object crops
                (``tools/make_shapes.py``)
    transfer    pretrain on the crops, then RetinaNet / Mask R-CNN / Semantic FPN from it and from scratch
                (``make transfer``, ``tools/transfer.py``)
    ablation    the ablation rows trained on the digits over several seeds (``make ablation-study``)
    cam_localization   do the class activation maps fall on the object? (``tools/cam_localization.py``)
"""
