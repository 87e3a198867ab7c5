"""What a deployed ConvMLP file says about itself, stored in the file: the architecture and weights it came
from, its outputs, the class names of its logits and the preprocessing of its input (the model's timm data
config). A service reads them from the model it loads instead of from a report beside it.

* ONNX: one entry of the model's ``metadata_props``, key :data:`KEY`, a JSON object (in ONNX Runtime:
  ``json.loads(session.get_modelmeta().custom_metadata_map['convmlp'])``);
* ``.pt2`` (a ``torch.export`` archive) and ``.ts.pt`` (TorchScript): their extra file :data:`ARCHIVE_FILE`
  (``torch.export.load(f, extra_files={'convmlp.json': ''})`` and ``torch.jit.load(f, _extra_files=...)``
  fill the dict).

:func:`read` reads any of them; :func:`data_config` gives back the data config that
:func:`src.model_options.preprocess` takes; :func:`served_classifier` makes a classifier of such a file.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

__all__ = ['KEY', 'ARCHIVE_FILE', 'PREPROCESSING_KEYS', 'serving_metadata', 'onnx_with_metadata',
           'archive_extra_files', 'read', 'data_config', 'served_classifier']

KEY = 'convmlp'
ARCHIVE_FILE = 'convmlp.json'
PREPROCESSING_KEYS = ('input_size', 'interpolation', 'crop_pct', 'mean', 'std')  # those eval_transform takes
TRANSFORM = ("timm's evaluation transform: resize the shorter side to input size / crop_pct, centre crop to the "
             "input size, RGB scaled to [0, 1], then (x - mean) / std; NCHW float32")


def serving_metadata(arch: str, weights: str, outputs: Sequence[str], data_cfg: dict,
                     class_names: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """The metadata of a deployed model: ``arch`` and ``weights`` (where they came from), the ``outputs``'
    names, ``class_names`` (the logits' classes, in order; None for a backbone's dense maps) and the
    preprocessing keys of ``data_cfg`` (timm's data config) with the transform they describe."""
    meta: Dict[str, object] = dict(arch=arch, weights=weights, outputs=list(outputs))
    if class_names is not None:
        meta['classes'] = [str(name) for name in class_names]
    meta['preprocessing'] = dict({k: list(v) if isinstance(v, tuple) else v for k, v in data_cfg.items()
                                  if k in PREPROCESSING_KEYS}, transform=TRANSFORM)
    return meta


def onnx_with_metadata(onnx_model: bytes, metadata: Dict[str, object]) -> bytes:
    """The serialised ONNX model with ``metadata`` as its ``metadata_props`` entry :data:`KEY` (replacing one
    it had); the graph is untouched."""
    import onnx
    model = onnx.load_from_string(onnx_model)
    props = [p for p in model.metadata_props if p.key != KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    entry = model.metadata_props.add()
    entry.key, entry.value = KEY, json.dumps(metadata)
    return model.SerializeToString()


def archive_extra_files(metadata: Dict[str, object]) -> Dict[str, str]:
    """The extra files that store ``metadata`` in a ``.pt2`` archive (``torch.export.save``'s ``extra_files``)
    or a TorchScript one (``torch.jit.save``'s ``_extra_files``)."""
    return {ARCHIVE_FILE: json.dumps(metadata)}


def read(path: Path) -> Dict[str, object]:
    """The metadata of a ``.onnx``, ``.pt2`` or ``.ts.pt`` file written by ``tools/quantize.py`` or
    ``tools/export.py``; ValueError naming the file if it holds none or is not such a file."""
    path = Path(path)
    if path.suffix == '.onnx':
        import onnx
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # onnx raises DecodeError (protobuf) or its own errors for a file that is no model
            raise ValueError(f'{path} is not an ONNX model ({type(e).__name__})') from None
        text = next((p.value for p in model.metadata_props if p.key == KEY), None)
    elif path.suffix in ('.pt2', '.pt'):
        kind = 'a torch.export archive (.pt2)' if path.suffix == '.pt2' else 'a TorchScript archive (.ts.pt)'
        try:
            with zipfile.ZipFile(path) as archive:
                text = next((archive.read(name).decode() for name in archive.namelist()
                             if name.endswith(f'/extra/{ARCHIVE_FILE}')), None)
        except zipfile.BadZipFile:
            raise ValueError(f'{path} is not {kind}') from None
    else:
        raise ValueError(f'{path}: a deployed model is a .onnx, .pt2 or .ts.pt file')
    if text is None:
        raise ValueError(f'{path} holds no ConvMLP metadata (class names, preprocessing): give a file written by '
                         f'tools/quantize.py or tools/export.py')
    return json.loads(text)


def data_config(metadata: Dict[str, object]) -> dict:
    """The timm data config of the metadata's preprocessing (what :func:`src.model_options.preprocess`
    takes)."""
    cfg = {k: v for k, v in metadata['preprocessing'].items() if k in PREPROCESSING_KEYS}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def served_classifier(path: Path, load: Callable[[], Callable]):
    """A deployed classifier file as a :class:`~src.model_options.Classifier`: its class names and data config
    from the file's metadata, its model ``load()`` (called once the metadata is read: a callable from a
    preprocessed (N, 3, H, W) float32 tensor to logits). ValueError naming the file if it holds no metadata or
    outputs dense maps instead of logits."""
    from ..model_options import Classifier
    meta = read(path)
    if 'classes' not in meta:
        raise ValueError(f"{path} outputs a backbone's dense maps ({', '.join(meta['outputs'])}), not logits: "
                         f"give a classifier's file (written without --headless or --no-head)")
    return Classifier(load(), f"{path} ({meta['arch']}, {meta['weights']})", meta['classes'],
                      f'the metadata of {path}', data_config(meta))
