"""The CelebA layout: ``img_align_celeba/``, ``list_eval_partition.txt``, ``identity_CelebA.txt``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PARTITIONS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class CelebAIndex:
    """File lists of one CelebA folder, by partition name, with identities where known."""

    root: Path
    partition_of: dict[str, int]
    identity_of: dict[str, int]

    @classmethod
    def open(cls, root: str | Path) -> CelebAIndex:
        root = Path(root)
        images = root / "img_align_celeba"
        if not images.is_dir():
            raise ValueError(f"{root}: not a CelebA folder (no img_align_celeba/ inside)")
        part_file = root / "list_eval_partition.txt"
        if part_file.exists():
            partition_of = {name: int(p) for name, p in _pairs(part_file)}
        else:  # no partition file: every image is training data
            partition_of = {p.name: 0 for p in images.glob("*.jpg")}
        id_file = root / "identity_CelebA.txt"
        identity_of = {name: int(i) for name, i in _pairs(id_file)} if id_file.exists() else {}
        return cls(root=root, partition_of=partition_of, identity_of=identity_of)

    def files(self, partition: str, limit: int = 0) -> list[Path]:
        """Sorted image paths of a partition ('train', 'val', 'test'); the first ``limit`` if > 0."""
        if partition not in PARTITIONS:
            raise ValueError(f"unknown partition '{partition}' (valid: {', '.join(PARTITIONS)})")
        code = PARTITIONS[partition]
        names = sorted(n for n, p in self.partition_of.items() if p == code)
        if not names:
            raise ValueError(f"{self.root}: partition '{partition}' is empty")
        if limit > 0:
            names = names[:limit]
        return [self.root / "img_align_celeba" / n for n in names]

    def identity(self, path: Path) -> int | None:
        return self.identity_of.get(Path(path).name)


def _pairs(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out.append((parts[0], parts[1]))
    return out


def partition_files(roots: list[str | Path], partition: str, limit: int = 0) -> list[Path]:
    """The ``partition`` of several CelebA folders, root after root (each sorted); the first ``limit``
    of the whole list if > 0. A folder with no image in that partition is an error: a typo in a root
    must not silently shrink the training set."""
    files: list[Path] = []
    for root in roots:
        files.extend(CelebAIndex.open(root).files(partition))
    return files[:limit] if limit > 0 else files
