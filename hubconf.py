"""torch.hub entry points of ConvMLP (arXiv 2109.04454)::

    model = torch.hub.load('OWNER/REPO', 'convmlp_s', pretrained=True)             # ImageNet-1k release
    model = torch.hub.load('OWNER/REPO', 'convmlp_m', pretrained='m.safetensors', num_classes=10)
    model = torch.hub.load('/path/to/clone', 'convmlp_l', source='local')          # random weights
    print(torch.hub.list('OWNER/REPO'), torch.hub.help('OWNER/REPO', 'convmlp_s'))

One entry per lowercase ``convmlp*`` factory of :mod:`src.convmlp` (so a factory added there is on the
hub too), plus the release's timm names ``convmlp_{s,m,l}_classification``: the same names timm knows
after ``import src.classification``. The entries need nothing beyond torch (``.safetensors`` weights
also need the ``safetensors`` package).
"""
import importlib as _importlib
import importlib.util as _util
import os as _os
import sys as _sys

dependencies = ['torch']

_ROOT = _os.path.dirname(_os.path.abspath(__file__))


def _import_convmlp():
    """This clone's ``src.convmlp``, also when a package named ``src`` from elsewhere is imported already
    (then this clone's package is imported under a private name)."""
    other = _sys.modules.get('src')
    if other is None or _os.path.dirname(_os.path.dirname(_os.path.abspath(other.__file__ or ''))) == _ROOT:
        _sys.path.insert(0, _ROOT)
        try:
            return _importlib.import_module('src.convmlp')
        finally:
            _sys.path.remove(_ROOT)
    name = '_convmlp_hub_src'
    if name not in _sys.modules:
        spec = _util.spec_from_file_location(name, _os.path.join(_ROOT, 'src', '__init__.py'),
                                             submodule_search_locations=[_os.path.join(_ROOT, 'src')])
        _sys.modules[name] = _util.module_from_spec(spec)
        spec.loader.exec_module(_sys.modules[name])
    return _importlib.import_module(f'{name}.convmlp')


def _release_alias(factory):
    """``{factory}_classification``, the name the release registered in timm for the same model."""
    def entry(*args, **kwargs):
        return factory(*args, **kwargs)
    entry.__name__ = entry.__qualname__ = f'{factory.__name__}_classification'
    entry.__doc__ = f"The release's name for ``{factory.__name__}``, same model and weights.\n\n{factory.__doc__}"
    return entry


_convmlp = _import_convmlp()
for _name in _convmlp.__all__:
    if _name.startswith('convmlp') and _name.islower():
        globals()[_name] = getattr(_convmlp, _name)
for _name in ('convmlp_s', 'convmlp_m', 'convmlp_l'):
    globals()[f'{_name}_classification'] = _release_alias(getattr(_convmlp, _name))
