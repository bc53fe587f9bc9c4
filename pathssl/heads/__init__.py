"""Dense heads on pretrained encoders: HoVer-Net style nuclei segmentation + classification.

:mod:`.hovernet` (model), :mod:`.targets` (HV maps), :mod:`.loss` (MONAI ``HoVerNetLoss``),
:mod:`.postprocess` (MONAI watershed post-processing), :mod:`.datasets` (PanNuke, CoNSeP/Lizard,
image + ``.npz`` pairs; lazy PanNuke folds; random crops with one shared augmentation draw).
"""

from pathssl.heads.datasets import (
    HGSC_TYPES,
    PANNUKE_TYPES,
    LabelledImage,
    NucleiCropDataset,
    PanNukeFold,
    load_mat_folder,
    load_mat_image,
    load_npz_pair,
    load_pannuke,
)
from pathssl.heads.hovernet import HV_KEY, NP_KEY, TP_KEY, NucleiModel, build_nuclei_model
from pathssl.heads.postprocess import Instances, PostProcessConfig, postprocess
from pathssl.heads.targets import hover_maps, make_targets

__all__ = [
    "HGSC_TYPES",
    "HV_KEY",
    "NP_KEY",
    "PANNUKE_TYPES",
    "TP_KEY",
    "Instances",
    "LabelledImage",
    "NucleiCropDataset",
    "NucleiModel",
    "PanNukeFold",
    "PostProcessConfig",
    "build_nuclei_model",
    "hover_maps",
    "load_mat_folder",
    "load_mat_image",
    "load_npz_pair",
    "load_pannuke",
    "make_targets",
    "postprocess",
]
