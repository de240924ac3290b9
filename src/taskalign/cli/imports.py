"""Start-up time: MONAI without its optional extras.

`import monai` imports every MONAI module, and with them every optional dependency they probe: transformers
(Transchex's BERT, about 4 s of a job's start-up on 2 cores), scipy (scipy.signal, scipy.stats, scipy.sparse),
scikit-learn and matplotlib. No MONAI API that taskalign calls (ViT and transformer blocks, UNet, ResNet, the
losses, metrics and array transforms it uses) needs any of them. While the monai package itself is being
imported, these read as absent, so MONAI's optional_import records them as missing; afterwards they import as
usual for taskalign's own code (PEFT needs transformers, the evaluation scikit-learn, the figures matplotlib).
Only the entry points install it (taskalign/cli/__init__.py): a library import must not change `sys.meta_path`.
tests/test_imports.py checks that models, losses, metrics and augmentation give the same bytes either way.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

OPTIONAL = ("transformers", "scipy", "sklearn", "matplotlib")


class AbsentWhileMonaiImports(importlib.abc.MetaPathFinder):
    """Raises ModuleNotFoundError for OPTIONAL packages (and their submodules) not yet imported."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in OPTIONAL:
            raise ModuleNotFoundError(f"{name} is not imported while monai is (taskalign.cli.imports)", name=name)
        return None


class MonaiWithoutExtras(importlib.abc.MetaPathFinder):
    """A one-shot finder: wraps the loading of the top-level `monai` package, then removes itself."""

    def find_spec(self, name, path=None, target=None):
        if name != "monai":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_without_extras(module):
            blocker = AbsentWhileMonaiImports()
            sys.meta_path.insert(0, blocker)
            try:
                exec_module(module)
            finally:
                sys.meta_path.remove(blocker)

        spec.loader.exec_module = exec_without_extras
        return spec


def install() -> None:
    """Put the finder first on sys.meta_path unless monai is already imported (then it is too late)."""
    if "monai" not in sys.modules and not any(isinstance(f, MonaiWithoutExtras) for f in sys.meta_path):
        sys.meta_path.insert(0, MonaiWithoutExtras())
