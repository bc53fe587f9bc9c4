"""The demo, part of the product: ``pathssl demo`` / :func:`run_demo`.

Every stage is a few calls of the functions the CLI commands run, so every figure in the
report comes from the code a user calls:

=========  ==========================================================================
tiling     ``tiling.tile_slides`` on ``DATA/slides`` -> ``OUT/tiles`` (a broken slide
           and one without a resolution are reported as failed, the demo goes on)
augment    ``pathssl augment-preview``'s functions -> ``OUT/augment-simclr.png``
pretrain   ``pathssl pretrain`` of ``configs/pretrain/simclr_resnet18_cpu_demo.yaml`` on
           CMU-1 tiles -> ``OUT/pretrain/simclr_resnet18/last.pt``
knn        nucleus crops of ``hgsc_nest`` scored by ``pathssl eval``'s kNN protocol; the
           eval configs that reproduce the figures -> ``OUT/knn/eval_*.yaml``, ``knn.json``
nuclei     ``pathssl nuclei train`` on the pretrained trunk, scored on the held-apart
           region as the command scores it -> ``OUT/nuclei/``
predict    ``pathssl nuclei predict`` of CMU-1 -> ``OUT/predict/*.geojson``, overlay PNG
=========  ==========================================================================

then ``OUT/report.html`` (:func:`pathssl.demo.report.write_report`). Settings the demo passes
to configs are in :mod:`pathssl.demo.stages`.
"""

from pathssl.demo.run import DEFAULT_DATA, DemoResult, run_demo

__all__ = ["DEFAULT_DATA", "DemoResult", "run_demo"]
