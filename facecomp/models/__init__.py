"""Models of the paper: generator, local/global discriminators, face-parsing network."""

from facecomp.models.discriminators import DCGANDiscriminator, build_discriminators, crop_holes, hole_boxes
from facecomp.models.generator import Generator
from facecomp.models.parsing import LABELS, ParsingNet, freeze

__all__ = ["DCGANDiscriminator", "Generator", "LABELS", "ParsingNet", "build_discriminators", "crop_holes",
           "freeze", "hole_boxes"]
