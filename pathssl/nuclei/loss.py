"""The HoVer-Net loss through MONAI's ``HoVerNetLoss`` (Graham et al. 2019, eq. 1-4).

MONAI's default weights (checked in tests): NP cross-entropy 1 + Dice 1, HV MSE **2** + MSE of
Sobel gradients (MSGE) 1 (kernel 5, on nucleus pixels), TP cross-entropy 1 + Dice 1. That 2 is
MONAI's choice: the paper sets its weight of 2 on the MSGE term (lambda_b) and the HoVer-Net
reference code uses 1 and 1; ``lambda_hv_mse`` / ``lambda_hv_grad`` select any of these. Targets
come as class indices and are one-hot encoded here.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pathssl.nuclei.model import HV_KEY, NP_KEY, TP_KEY


class HoVerNetCriterion(nn.Module):
    """``(outputs, {"np": (B, H, W) long, "hv": (B, 2, H, W), "tp": (B, H, W) long})`` ->
    ``{"loss": scalar, "np_ce", "hv_mse", "tp_ce": detached diagnostics}``."""

    def __init__(
        self, lambda_hv_mse: float = 2.0, use_types: bool = True, lambda_hv_grad: float = 1.0
    ) -> None:
        super().__init__()
        from monai.apps.pathology.losses import HoVerNetLoss

        self.loss = HoVerNetLoss(lambda_hv_mse=lambda_hv_mse, lambda_hv_mse_grad=lambda_hv_grad)
        self.use_types = use_types

    def forward(self, out: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
        n_types = out[TP_KEY].shape[1]
        np_1h = F.one_hot(target["np"], 2).permute(0, 3, 1, 2).float()
        tgt = {NP_KEY: np_1h, HV_KEY: target["hv"].float()}
        pred = {NP_KEY: out[NP_KEY].float(), HV_KEY: out[HV_KEY].float()}
        if self.use_types:
            tgt[TP_KEY] = F.one_hot(target["tp"], n_types).permute(0, 3, 1, 2).float()
            pred[TP_KEY] = out[TP_KEY].float()
        loss = self.loss(pred, tgt)
        logs = {
            "loss": loss,
            "np_ce": F.cross_entropy(pred[NP_KEY], target["np"]).detach(),
            "hv_mse": F.mse_loss(pred[HV_KEY], tgt[HV_KEY]).detach(),
        }
        if self.use_types:
            logs["tp_ce"] = F.cross_entropy(pred[TP_KEY], target["tp"]).detach()
        return logs
