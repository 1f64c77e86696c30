"""Built-in benchmark adapters: every module in this folder is imported and registers itself.

No hand-kept list: dropping a file here is enough (modules starting with '_' are skipped).
"""
import importlib as _importlib
import pkgutil as _pkgutil

for _info in _pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        _importlib.import_module(f"{__name__}.{_info.name}")
