"""A training-free, deterministic stand-in for a nuclei model: dark-pixel threshold.

``ThresholdNucleiModel`` has the :class:`pathssl.nuclei.model.NucleiModel` contract
(``(B, 3, S, S)`` uint8 -> NP / HV / TP logits) but no weights: nucleus pixels are those darker
than ``threshold`` (mean of RGB) after a small opening, instances their connected components, HV
maps computed from those components, one type. It finds real-looking nuclei on H&E without
training, which makes it the reference model of the stitching and WSI tests and benchmarks (its
output in a window depends only on the connected components inside it).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import Tensor, nn

from pathssl.nuclei.model import HV_KEY, NP_KEY, TP_KEY
from pathssl.nuclei.targets import hover_maps


class ThresholdNucleiModel(nn.Module):
    """Dark connected components as nuclei; ``num_types`` type channels (all type 1)."""

    def __init__(self, threshold: float = 120.0, num_types: int = 1, logit: float = 8.0) -> None:
        super().__init__()
        self.threshold = threshold
        self.num_types = num_types
        self.logit = logit

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        imgs = x.detach().float().mean(1).cpu().numpy()  # (B, H, W)
        b, h, w = imgs.shape
        nuc = np.zeros((b, h, w), np.float32)
        hv = np.zeros((b, 2, h, w), np.float32)
        for i in range(b):
            mask = ndi.binary_opening(imgs[i] < self.threshold, iterations=2)
            lab, _ = ndi.label(mask)
            nuc[i] = lab > 0
            hv[i] = hover_maps(lab)
        np_t = torch.from_numpy(nuc)
        np_logits = torch.stack([-np_t, np_t], 1) * self.logit
        tp = torch.zeros(b, self.num_types + 1, h, w)
        tp[:, 0] = (1 - np_t) * self.logit
        tp[:, 1] = np_t * self.logit
        return {
            NP_KEY: np_logits.to(x.device),
            HV_KEY: torch.from_numpy(hv).to(x.device),
            TP_KEY: tp.to(x.device),
        }
