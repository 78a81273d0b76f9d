"""Face parsing inference: ``Parser(weights).labels(image)`` -> label ids at the input's size.

Like completion, a 178x218 CelebA-aligned face is parsed through the 128x128 face box of
:mod:`facecomp.layout` (any other image is stretched onto it); the class scores are warped back to
the input's resolution before the arg-max, so the label map lines up with the input pixel for
pixel. Pixels outside the face box are background.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from facecomp import models
from facecomp.images import to_tensor
from facecomp.layout import crop_matrix

PARSING_SIZE = 128


class Parser:
    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.net = models.load("parsing", weights, self.device)

    @torch.no_grad()
    def scores(self, faces: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] crops in [-1, 1] -> [N, K, S, S] class probabilities."""
        return self.net(faces.to(self.device)).float().softmax(1)

    @torch.no_grad()
    def labels(self, image: np.ndarray) -> np.ndarray:
        """[H, W, 3] uint8 -> [H, W] uint8 label ids (``facecomp.labels.LABELS`` order)."""
        h, w = image.shape[:2]
        m = crop_matrix(w, h, PARSING_SIZE, aug=None, rng=None)
        crop = cv2.warpAffine(image, m, (PARSING_SIZE, PARSING_SIZE), flags=cv2.INTER_AREA
                              if w * h > 4 * PARSING_SIZE**2 else cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        prob = self.scores(to_tensor(crop)[None])[0].cpu().numpy().transpose(1, 2, 0)  # [S, S, K]
        back = cv2.invertAffineTransform(m)
        k = prob.shape[2]
        full = np.stack([cv2.warpAffine(np.ascontiguousarray(prob[..., c]), back, (w, h), flags=cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_CONSTANT, borderValue=float(c == 0))
                         for c in range(k)], axis=2)
        return full.argmax(2).astype(np.uint8)
