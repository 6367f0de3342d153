"""IVON (Shen et al. 2024, arXiv:2402.17641): natural-gradient variational learning of a Gaussian
mean-field posterior over a plain network's weights, as one ``torch.optim.Optimizer``.
"""

from __future__ import annotations

from .optimizer import IVON

__all__ = ["IVON"]
