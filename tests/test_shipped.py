"""The weights that ship in the package: they load by default and complete real faces sensibly."""

from __future__ import annotations

import numpy as np

from facecomp import masks, metrics
from facecomp.eval.methods import BASELINES
from facecomp.images import read_rgb


def test_shipped_generator_is_the_default_and_small():
    from facecomp import models
    from facecomp.weights import SHIPPED

    DEFAULT_WEIGHTS = SHIPPED["generator"]
    from facecomp.weights import read_metadata

    assert DEFAULT_WEIGHTS.is_file(), f"{DEFAULT_WEIGHTS} is missing"
    # the paper generator's successor (MODEL_CARD.md): its own tensors only, the frozen bottleneck borrowed
    assert DEFAULT_WEIGHTS.stat().st_size <= 8 * 1024 * 1024
    meta = read_metadata(DEFAULT_WEIGHTS)
    assert meta["kind"] == "generator" and meta["stage"] == 3
    assert meta["sha256"] == "65f0073c12c2637861dab7c6456a5d08294a027d5242f711da09e3dbe723d62a"
    assert meta["base"]["name"] == "paper_generator.safetensors"
    generator = models.load("generator")
    assert generator.cfg.image_size == 128 and generator.cfg.skips == 4


def test_shipped_generator_beats_noise_fill_on_validation_faces(face_files):
    from facecomp.complete import Completer

    completer = Completer()
    gains_psnr, gains_ssim = [], []
    for f in face_files[:4]:
        img = read_rgb(f)
        h, w = img.shape[:2]
        for name in masks.OCCLUSIONS:
            m = masks.occlusion(name, w, h)
            ours = completer.complete(img, m, seed=0)[0]
            noise = BASELINES["noise"](img, m)
            gains_psnr.append(metrics.psnr_hole(ours, img, m) - metrics.psnr_hole(noise, img, m))
            gains_ssim.append(metrics.ssim(ours, img) - metrics.ssim(noise, img))
    assert min(gains_psnr) > 3.0, gains_psnr  # dB inside the hole, on every face and mask
    assert min(gains_ssim) > 0.0 and np.mean(gains_ssim) > 0.05, gains_ssim


def test_the_paper_generator_ships_unchanged_under_its_name():
    """`--model paper-generator` is the generator shipped before its successor, tensor for tensor: its
    identity (the SHA-256 of its tensors, checked again on every load) is pinned here."""
    from facecomp import models, weights

    path = weights.resolve("paper-generator")
    assert weights.identity(path) == "eb7a14ae3b4743ab89af3e1ab8c646d4c006dc279ddeaffe178594a01ff761ac"
    generator = models.load("generator", "paper-generator")
    assert generator.cfg.skips == 0 and generator.cfg.bottleneck == 512  # the paper's design
