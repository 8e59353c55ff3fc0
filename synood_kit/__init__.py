"""synood-kit: SynOOD (ICCV 2025) as a notebook-driven research kit.

Importing the package is cheap on purpose: torch, open_clip, diffusers, transformers and umap are
imported inside the modules and functions that use them, so ``import synood_kit`` stays well under a second.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
