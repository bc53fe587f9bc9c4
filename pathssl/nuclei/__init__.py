"""The nuclei stage: data, model, training, inference and scores in one folder.

- data: :mod:`.readers` (Aperio ImageScope XML, QuPath GeoJSON, binary masks, HoVer-Net ``.mat``),
  :mod:`.labelled` (``LabelledImage``, resampling to an mpp), :mod:`.sources` (many sources in one
  training set: weights, organs, patients, provenance and licences), :mod:`.splits` (whole images
  held apart by image, organ or patient), :mod:`.data` (PanNuke folds, CoNSeP/Lizard ``.mat``,
  image + ``.npz`` pairs, random crops with one augmentation draw for image and maps),
  :mod:`.targets` (HoVer-Net HV maps);
- model: :mod:`.model` (HoVer-Net style NP/HV/TP head on any registered encoder), :mod:`.loss`
  (MONAI ``HoVerNetLoss``), :mod:`.postprocess` (MONAI watershed post-processing),
  :mod:`.classical` (the one training-free model: haematoxylin threshold + watershed);
- training: :mod:`.train` and :mod:`.config` (through the one training loop), :mod:`.label_efficiency`;
- inference: :mod:`.predict` (images and whole slides; window plan and stitching in :mod:`.stitch`,
  dihedral test-time augmentation in :mod:`.tta`, stain normalisation to the training data's
  reference in :mod:`.stain_norm`),
  :mod:`.batch` (many inputs), :mod:`.geojson` (QuPath GeoJSON and overlays);
- scores: :mod:`.scores`, the one set of metrics over images that the CLI, the demo,
  label-efficiency runs and in-training validation report (conventions in
  :mod:`pathssl.eval.metrics`).

Import the submodules you need (they import torch).
"""
