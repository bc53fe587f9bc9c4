"""Nuclei workflows on top of :mod:`pathssl.heads`: training (:mod:`.train`), image and
whole-slide inference with window stitching (:mod:`.predict`), QuPath GeoJSON and overlays
(:mod:`.geojson`), label-efficiency runs (:mod:`.label_efficiency`) and a training-free
threshold baseline (:mod:`.baseline`). Import the submodules you need (they import torch).

:mod:`.scores` holds the one set of metrics over images that the CLI, the demo, label-efficiency
runs and in-training validation report (conventions in :mod:`pathssl.eval.metrics`).
"""
