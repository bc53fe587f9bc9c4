"""ORL (Xie et al. 2021) stage 2 with pathology's objects: proposals per tile (nuclei, nuclear
clusters, selective-search regions; :mod:`.proposals`), cached next to each store
(:mod:`.cache`), and cross-tile RoI pairs from a stage-1 encoder (:mod:`.pairs`). Stage 3 is the
``orl`` method (:mod:`pathssl.ssl.orl`); stage 1 is ``byol``."""
