"""Nuclei workflows on top of :mod:`pathssl.heads`: training (:mod:`.train`), image and
whole-slide inference with window stitching (:mod:`.predict`), QuPath GeoJSON and overlays
(:mod:`.geojson`), label-efficiency runs (:mod:`.label_efficiency`) and a training-free
threshold baseline (:mod:`.baseline`). Import the submodules you need (they import torch).

Validation during training scores with :mod:`pathssl.eval.metrics` (a layer below);
label-efficiency runs take their scoring function as an argument.
"""
