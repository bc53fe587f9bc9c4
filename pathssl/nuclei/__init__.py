"""The nuclei stage: data, model, training, inference and scores in one folder.

- data: :mod:`.data` (PanNuke folds, CoNSeP/Lizard ``.mat``, image + ``.npz`` pairs, random crops
  with one augmentation draw for image and maps), :mod:`.targets` (HoVer-Net HV maps);
- model: :mod:`.model` (HoVer-Net style NP/HV/TP head on any registered encoder), :mod:`.loss`
  (MONAI ``HoVerNetLoss``), :mod:`.postprocess` (MONAI watershed post-processing);
- training: :mod:`.train` and :mod:`.config` (through the one training loop), :mod:`.label_efficiency`;
- inference: :mod:`.predict` (images and whole slides, window stitching in :mod:`.stitch`),
  :mod:`.batch` (many inputs), :mod:`.geojson` (QuPath GeoJSON and overlays);
- scores: :mod:`.scores`, the one set of metrics over images that the CLI, the demo,
  label-efficiency runs and in-training validation report (conventions in
  :mod:`pathssl.eval.metrics`).

Import the submodules you need (they import torch).
"""
