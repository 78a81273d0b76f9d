"""What an artifact is and what made it: ``facecomp-artifact.json`` beside the compiled file.

Loading checks the record before running anything: the compiled file must hash to what was
recorded (a swapped or half-copied file is refused), and a caller that names the weights or the
precision it expects gets a clear refusal when the artifact was built from others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path

META_NAME = "facecomp-artifact.json"
META_VERSION = 1


class ArtifactMismatch(ValueError):
    """The artifact does not match what the caller asked for (weights, precision, device, format)."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the packages that built the artifact (absent ones are left out)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


@dataclass
class TensorSpec:
    name: str
    shape: list[int]  # one sample, without the batch dimension
    dtype: str = "float32"


@dataclass
class ArtifactMeta:
    format: str  # aoti | onnx | tensorrt
    precision: str  # compute precision inside the graph (I/O is float32)
    device: str  # cpu | cuda
    batch: dict[str, int]  # {"min", "opt", "max"}
    input: TensorSpec
    output: TensorSpec
    generator_config: dict  # GeneratorConfig the weights were trained with
    weights_sha256: str  # facecomp.weights.identity (the tensors' SHA-256) of the weights it was built from
    weights_name: str
    files: dict[str, str]  # artifact file name -> sha256
    versions: dict[str, str] = field(default_factory=dict)
    parity: dict[str, dict[str, float]] = field(default_factory=dict)  # batch -> error vs eager, measured at export
    # The engine contract (facecomp.contract.describe + weights identity): layout, range, mask, noise, crop box.
    # The ONNX file carries the same entries as metadata_props.
    contract: dict[str, str] = field(default_factory=dict)
    created: str = ""
    host: str = ""
    meta_version: int = META_VERSION

    def write(self, folder: Path) -> Path:
        self.created = self.created or datetime.now(UTC).isoformat(timespec="seconds")
        self.host = self.host or f"{platform.machine()} {platform.processor() or platform.system()}"
        path = folder / META_NAME
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: str | Path) -> ArtifactMeta:
        folder = Path(folder)
        path = folder / META_NAME
        if not path.is_file():
            raise ArtifactMismatch(f"{folder}: not a facecomp artifact (no {META_NAME}); make one with facecomp export")
        try:
            raw = json.loads(path.read_text())
            if raw.get("meta_version") != META_VERSION:
                raise ArtifactMismatch(f"{path}: artifact format version {raw.get('meta_version')} is not "
                                       f"{META_VERSION}; export it again with this facecomp")
            raw["input"], raw["output"] = TensorSpec(**raw["input"]), TensorSpec(**raw["output"])
            return cls(**raw)
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise ArtifactMismatch(f"{path}: unreadable artifact record ({e})") from None

    def verify_files(self, folder: Path) -> None:
        for name, digest in self.files.items():
            path = folder / name
            if not path.is_file():
                raise ArtifactMismatch(f"{folder}: {name} is missing")
            if sha256_file(path) != digest:
                raise ArtifactMismatch(f"{path}: file does not match its record (changed or copied partly); "
                                       "export again")

    def check(self, *, weights: str | Path | None = None, precision: str | None = None,
              device: str | None = None) -> None:
        """Refuse, with the reason, an artifact that is not what the caller expects."""
        if weights is not None:
            from facecomp.weights import identity

            digest = identity(weights)
            if digest != self.weights_sha256:
                raise ArtifactMismatch(
                    f"the engine was built from other weights ({self.weights_name}, sha256 {self.weights_sha256[:12]}) "
                    f"than {weights} (sha256 {digest[:12]}); export it again from these weights")
        if precision is not None and precision != self.precision:
            raise ArtifactMismatch(f"the engine was built for {self.precision}, not {precision}; "
                                   f"export again with --precision {precision}")
        if device is not None and device != self.device:
            raise ArtifactMismatch(f"the engine was built for {self.device} and cannot run on {device}; "
                                   f"export again with --device {device}")
