"""Every trait of every interface has a ``desc`` (nipype's checkspecs idea).

Traits accepts unknown metadata silently, so a typo such as ``dec=`` would
otherwise go unnoticed and leave a trait undocumented.
"""

import importlib
import inspect
import pkgutil

from nipype.interfaces.base import BaseInterface

import asl_pipeline.interfaces as pkg


def _interfaces():
    found = []
    for mod_info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"{pkg.__name__}.{mod_info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(obj, BaseInterface)
                and obj.__module__ == module.__name__
                and obj.input_spec is not None
            ):
                found.append(obj)
    return found


def test_every_trait_has_desc():
    missing = []
    for iface in _interfaces():
        for spec in (iface.input_spec, iface.output_spec):
            if spec is None:
                continue
            for name, trait in spec().traits().items():
                if name.startswith("trait_") or name in ("ignore_exception",):
                    continue
                if not trait.desc:
                    missing.append(f"{iface.__module__}.{iface.__name__}.{name}")
    assert not missing, "traits without desc: " + ", ".join(missing)
