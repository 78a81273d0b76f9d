"""Cluster training: Ray Train launches the workers, DeepSpeed engines step G and the discriminators.

Installed as ``facecomp.cluster`` (needs the ``cluster`` extra). The training step is
facecomp.train.step.train_step; this package only wraps it. Nothing here runs at import.
"""
