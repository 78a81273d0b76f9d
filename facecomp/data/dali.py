"""The NVIDIA DALI input pipeline: the reference pipeline's graph (:mod:`facecomp.data.pipeline`) in DALI.

One graph, two placements, chosen once from the run's device: on a GPU the JPEGs are decoded by
the mixed (nvJPEG) decoder and the warp, normalisation and mask run as GPU operators; without one
the same operators run on the CPU (``device_id=None``). Either way the iterator yields the batch
contract of :mod:`facecomp.data.pipeline`:

  ``image``  [N, 3, S, S] float32 in [-1, 1]
  ``mask``   [N, 1, S, S] float32, 1 = missing
  ``index``  [N] int64, index of each sample in the ``files`` list given to the loader
  ``skipped`` int, unreadable files left out (see below)

What matches the reference and what does not:
- Geometry: the same 2x3 matrix as :func:`layout.crop_matrix` (crop box, flip, shift, rotation,
  scale about the crop centre, the same ranges from the same DataConfig), built with
  ``fn.transforms`` and applied by ``fn.experimental.warp_perspective`` with OpenCV's pixel origin
  and border mode (reflect 101), so each output pixel is the one ``cv2.warpAffine`` makes from the
  same matrix, up to rounding.
- Mask: a ``mask.size`` square at a uniform random position (both corners uniform over
  0..S-size inclusive, as :func:`masks.square`); only the "square" kind exists here.
- Randomness is DALI's own (seeded by (train.seed, rank)), so the samples agree with the
  reference in distribution, not one by one. Sample order: a full permutation of the partition
  per epoch (``shuffle_after_epoch`` with train.seed, the same on every rank, so shards never
  overlap); the shards are made equal (at most world_size - 1 files left out), and each rank
  drops its shard's last partial batch each epoch, as the reference sampler does.
- Resume: the reader and random-generator state (DALI checkpointing) goes into the training
  checkpoint as base64 text (:meth:`DaliLoader.state`); a resumed run continues the epoch exactly.
- Unreadable files: a file whose JPEG (or PNG) start or end marker is missing (truncated, empty,
  another format) is left out of the file list before the pipeline is built, so the decoder never meets it;
  rank 0 reports their number as ``skipped`` on the first batch of each epoch, as the reference
  counts each unreadable file once per epoch.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facecomp import layout
from facecomp.config import Config, DataConfig
from facecomp.runtime import MissingExtra, cores_per_local_rank

try:
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
except ImportError:  # optional extra; the CLI prints this as one line
    raise MissingExtra("dali", "data.loader=dali", "NVIDIA DALI") from None

log = logging.getLogger(__name__)

READER = "reader"  # the reader's name: the iterator sizes epochs by it
OUTPUTS = ("image", "mask", "index")
ALIGNED_W, ALIGNED_H = layout.ALIGNED_SIZE
CROP_X0, CROP_Y0, _, _ = layout.CROP_BOX
CROP_SIDE = layout.CROP_BOX[2] - CROP_X0  # the box is square


def _intact(path: str | Path, head: bytes, end: bytes, tail: int) -> bool:
    """``head`` at the start of the file and ``end`` within its last ``tail`` bytes."""
    try:
        with open(path, "rb") as f:
            if f.read(len(head)) != head:
                return False
            size = f.seek(0, os.SEEK_END)
            f.seek(max(len(head), size - tail))
            return end in f.read()
    except OSError:
        return False


def jpeg_intact(path: str | Path, tail: int = 64) -> bool:
    """Cheap structural check: the file starts with a JPEG SOI marker and has its EOI marker near
    the end. Truncation (a cut-off download or copy) removes the EOI; 0xFFD9 cannot occur inside
    entropy-coded data (0xFF is byte-stuffed there), so a cut file is not mistaken for a whole one."""
    return _intact(path, b"\xff\xd8", b"\xff\xd9", tail)


def png_intact(path: str | Path, tail: int = 64) -> bool:
    """The PNG signature at the start and the IEND chunk at the end."""
    return _intact(path, b"\x89PNG\r\n\x1a\n", b"IEND", tail)


def readable_files(files: list[Path]) -> tuple[list[int], list[Path]]:
    """Indices of the files that pass :func:`jpeg_intact` or :func:`png_intact`, and the paths of
    those that pass neither. Strict on purpose: a JPEG with more than 64 bytes after its end marker
    (some camera trailers) is left out too; CelebA's faces have none."""
    good, bad = [], []
    for i, p in enumerate(files):
        (good.append(i) if jpeg_intact(p) or png_intact(p) else bad.append(Path(p)))
    return good, bad


@dataclass(frozen=True, kw_only=True)
class DaliSpec:
    """Everything the graph depends on, so a resumed pipeline is built exactly like the saved one."""

    image_size: int
    data: DataConfig
    mask_size: int
    batch_size: int
    seed: int
    gpu: bool
    device_id: int | None
    threads: int
    fast_idct: bool = False  # libjpeg-turbo's fast IDCT (CPU decode): faster, not bit-equal to PIL's decode
    prefetch: int = 2  # batches DALI prepares ahead: one is decoded while the training step uses another
    with_matrix: bool = False  # also output the 2x3 warp matrix (tests and benchmarks measure it)


def _warp_matrix(jpegs, spec: DaliSpec):
    """[2, 3] per sample: input pixels -> crop pixels, OpenCV's convention (pixel centres at integers)."""
    s, d = float(spec.image_size), spec.data
    hw = fn.peek_image_shape(jpegs, dtype=types.FLOAT)  # [H, W, C] from the header, no decode
    h, w = hw[0], hw[1]
    aligned = fn.cast((h == ALIGNED_H) & (w == ALIGNED_W), dtype=types.FLOAT)  # layout.face_box
    x0, y0 = aligned * CROP_X0, aligned * CROP_Y0
    bw = aligned * CROP_SIDE + (1.0 - aligned) * w
    bh = aligned * CROP_SIDE + (1.0 - aligned) * h
    # The face box onto the S x S crop (layout.input_to_crop), then the augmentation about the crop's
    # centre. Few operators on purpose: each costs a pass over the batch, and these are tiny.
    m = fn.transforms.crop(from_start=fn.stack(x0, y0), from_end=fn.stack(x0 + bw, y0 + bh),
                           to_start=[0.0, 0.0], to_end=[s, s])
    centre = [s / 2.0] * 2
    flip = 1.0 - 2.0 * fn.cast(fn.random.coin_flip(probability=d.flip), dtype=types.FLOAT)
    # a zero range skips its random op (DALI refuses an empty range)
    scale = fn.random.uniform(range=[d.scale_min, d.scale_max]) if d.scale_max > d.scale_min else d.scale_min
    m = fn.transforms.scale(m, scale=fn.stack(flip * scale, scale), center=centre)  # flip first, as crop_matrix
    if d.rotate > 0:
        m = fn.transforms.rotation(m, angle=fn.random.uniform(range=[-d.rotate, d.rotate]), center=centre)
    if d.shift > 0:
        m = fn.transforms.translation(m, offset=fn.random.uniform(range=[-d.shift, d.shift], shape=[2]) * s)
    return m


def _warp(img, matrix, size: int):
    """[H, W, 3] uint8 -> [S, S, 3] uint8 through the [2, 3] matrix (source -> crop).

    The perspective warp with an affine matrix, not fn.warp_affine: it takes OpenCV's pixel origin
    and border (reflect 101), so it resamples what cv2.warpAffine does in the reference (equal on
    this CPU, tests/test_dali.py), and it costs about 40% of fn.warp_affine here (bench/RESULTS.md).
    """
    affine3 = fn.cat(matrix, fn.constant(fdata=[0.0, 0.0, 1.0], shape=[1, 3]), axis=0)  # [3, 3]
    return fn.experimental.warp_perspective(img, matrix=affine3, size=[size, size], inverse_map=False,
                                            pixel_origin="center", border_mode="reflect_101",
                                            interp_type=types.INTERP_LINEAR)


def _corner(image_size: int, mask_size: int):
    """The square's top-left (y, x), each uniform over the integers 0..image_size-mask_size inclusive.

    A discrete draw from the listed values: a continuous uniform over [0, S-size] cast to INT32 rounds,
    so the two end positions would get half the probability of the others (measured, tests/test_dali.py).
    """
    return fn.random.uniform(values=list(range(image_size - mask_size + 1)), dtype=types.INT32, shape=[2])


def _graph(files: list[str], labels: list[int], spec: DaliSpec, shard_id: int, num_shards: int):
    jpegs, index = fn.readers.file(files=files, labels=labels, shard_id=shard_id, num_shards=num_shards,
                                   shuffle_after_epoch=True, shuffle_after_epoch_seed=spec.seed,
                                   pad_last_batch=True, name=READER)
    matrix = _warp_matrix(jpegs, spec)
    img = fn.decoders.image(jpegs, device="mixed" if spec.gpu else "cpu", output_type=types.RGB,
                            use_fast_idct=spec.fast_idct)
    s = spec.image_size
    face = _warp(img, matrix, s)
    image = fn.crop_mirror_normalize(face, dtype=types.FLOAT, output_layout="CHW",
                                     mean=[127.5] * 3, std=[127.5] * 3)  # [3, S, S] in [-1, 1]
    corner = _corner(s, spec.mask_size)
    zeros = fn.reshape(fn.zeros(shape=[1, s, s], dtype=types.FLOAT), layout="CHW")
    if spec.gpu:
        zeros = zeros.gpu()
    mask = fn.erase(zeros, anchor=fn.cast(corner, dtype=types.FLOAT), shape=[spec.mask_size] * 2,
                    axis_names="HW", fill_value=1.0)  # [1, S, S]
    outputs = (image, mask, index)
    return (*outputs, matrix) if spec.with_matrix else outputs


def build_pipeline(files: list[str], labels: list[int], spec: DaliSpec, shard_id: int = 0, num_shards: int = 1,
                   checkpoint: bytes | None = None):
    """The DALI pipeline over ``files`` (labels = their indices in the caller's list)."""
    pipe_seed = int(np.random.SeedSequence([spec.seed, shard_id]).generate_state(1)[0] & 0x7FFFFFFF)

    @pipeline_def(enable_checkpointing=True)
    def pipe():
        return _graph(files, labels, spec, shard_id, num_shards)

    return pipe(batch_size=spec.batch_size, num_threads=spec.threads, device_id=spec.device_id, seed=pipe_seed,
                prefetch_queue_depth=spec.prefetch, checkpoint=checkpoint)


class DaliLoader:
    """Endless batches of the contract from a DALI pipeline; :meth:`state` is the resume point."""

    def __init__(self, files: list[Path], spec: DaliSpec, rank: int = 0, world_size: int = 1,
                 state: str | None = None):
        good, bad = readable_files(files)
        if bad:
            log.warning("%d unreadable image(s) left out of the DALI file list, e.g. %s", len(bad), bad[0])
        per_rank = len(good) // world_size
        if per_rank < spec.batch_size:
            raise ValueError(f"{len(good)} readable images cannot fill a batch of {spec.batch_size} "
                             f"on {world_size} rank(s)")
        # Equal shards: with unequal ones the reader's padding repeats samples and the ranks' epochs
        # drift apart. At most world_size - 1 files (the last names) are left out of every epoch.
        good = good[: per_rank * world_size]
        self.spec, self.rank, self.world_size = spec, rank, world_size
        self.unreadable = bad
        checkpoint = base64.b64decode(state) if state else None
        self.pipe = build_pipeline([str(files[i]) for i in good], good, spec, rank, world_size, checkpoint)
        names = [*OUTPUTS, "matrix"] if spec.with_matrix else list(OUTPUTS)
        self._it = DALIGenericIterator([self.pipe], names, reader_name=READER,
                                       last_batch_policy=LastBatchPolicy.DROP, auto_reset=True)
        self.steps_per_epoch = len(self._it)  # this rank's full batches per epoch (its shard // batch)
        self._new_epoch = state is None  # a resumed run is mid-epoch: its unreadable files were counted

    def state(self) -> str:
        """Reader position and random state after the batches yielded so far (base64 text)."""
        return base64.b64encode(self._it.checkpoints()[0]).decode("ascii")

    def __iter__(self) -> Iterator[dict]:
        while True:
            for (out,) in self._it:  # one pipeline: a list of one dict per batch; ends with each epoch
                skipped = len(self.unreadable) if self._new_epoch and self.rank == 0 else 0
                self._new_epoch = False
                batch = {"image": out["image"], "mask": out["mask"],
                         "index": out["index"].reshape(-1).to(torch.int64), "skipped": skipped}
                if self.spec.with_matrix:
                    batch["matrix"] = out["matrix"]
                yield batch
            self._new_epoch = True


def build_dali_loader(cfg: Config, files: list[Path], start_step: int = 0, rank: int = 0, world_size: int = 1,
                      device: torch.device | None = None, state: str | None = None,
                      with_matrix: bool = False) -> DaliLoader:
    """The DALI loader for a run. ``state`` (from :meth:`DaliLoader.state`) resumes mid-epoch;
    without it a resumed run (``start_step`` > 0) starts a fresh epoch order and says so."""
    if cfg.mask.kind != "square":
        raise ValueError(f"data.loader=dali draws only mask.kind='square', got '{cfg.mask.kind}' "
                         "(use data.loader=torch for other masks)")
    if start_step > 0 and state is None:
        log.warning("no DALI reader state in the checkpoint: the data order restarts at step %d", start_step)
    return DaliLoader(files, dali_spec(cfg, device, with_matrix), rank=rank, world_size=world_size, state=state)


def dali_spec(cfg: Config, device: torch.device | None = None, with_matrix: bool = False) -> DaliSpec:
    """The graph a run's config asks for, placed on ``device`` (CUDA: GPU operators; else CPU ones).
    Threads: ``data.workers``, else this rank's share of the node's cores (eight GPU ranks on a node
    each taking every core would oversubscribe it eightfold)."""
    gpu = device is not None and device.type == "cuda"
    return DaliSpec(image_size=cfg.generator.image_size, data=cfg.data, mask_size=cfg.mask.size,
                    batch_size=cfg.train.batch_size, seed=cfg.train.seed, gpu=gpu,
                    device_id=(device.index or 0) if gpu else None,
                    threads=cfg.data.workers or cores_per_local_rank(), with_matrix=with_matrix)
