"""Nuclei workflows on top of :mod:`pathssl.heads`: training (:mod:`.train`), image and
whole-slide inference with window stitching (:mod:`.predict`), QuPath GeoJSON and overlays
(:mod:`.geojson`), label-efficiency runs (:mod:`.label_efficiency`) and a training-free
threshold baseline (:mod:`.baseline`). Import the submodules you need (they import torch).

Metrics are not imported here: :mod:`pathssl.eval` sits in the same layer, so scoring functions
are passed in (``pathssl nuclei`` wires ``pathssl.eval.metrics`` in).
"""
