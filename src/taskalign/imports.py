"""Start-up time: MONAI without transformers.

`import monai` imports every MONAI network (monai.apps.mmars loads monai.networks.nets), and Transchex's optional
import of transformers (BERT) costs about 4 s of a job's start-up on 2 cores, close to half of it. No taskalign
code uses Transchex. While the monai package itself is being imported, transformers reads as absent, so MONAI's
optional_import records it as missing; afterwards transformers imports as usual (PEFT needs it for LoRA).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys


class MonaiWithoutTransformers(importlib.abc.MetaPathFinder):
    """A one-shot finder: wraps the loading of the top-level `monai` package, then removes itself."""

    def find_spec(self, name, path=None, target=None):
        if name != "monai":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or "transformers" in sys.modules:
            return spec
        exec_module = spec.loader.exec_module

        def exec_without_transformers(module):
            sys.modules["transformers"] = None  # import of transformers raises ModuleNotFoundError meanwhile
            try:
                exec_module(module)
            finally:
                if "transformers" in sys.modules and sys.modules["transformers"] is None:
                    del sys.modules["transformers"]

        spec.loader.exec_module = exec_without_transformers
        return spec


def install() -> None:
    """Put the finder first on sys.meta_path unless monai is already imported (then it is too late)."""
    if "monai" not in sys.modules and not any(isinstance(f, MonaiWithoutTransformers) for f in sys.meta_path):
        sys.meta_path.insert(0, MonaiWithoutTransformers())
