"""Evaluation: nuclei instance metrics (torch-free), tile classification metrics, probes on
frozen features, evaluation inputs and reports.

Importing this package imports nothing heavy; import the submodules you need:
``pathssl.eval.metrics`` (nuclei: PQ, mPQ/bPQ, CoNIC PQ, AJI, AJI+, Dice, DICE2, detection F1;
numpy + scipy only), ``pathssl.eval.classification`` (balanced accuracy, macro-F1, AUROC, ECE),
``pathssl.eval.probes`` (linear, kNN, few-shot, fine-tune; torch), ``pathssl.eval.data``,
``pathssl.eval.report``.
"""
