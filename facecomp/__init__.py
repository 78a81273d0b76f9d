"""facecomp: generative face completion (Li, Liu, Yang, Yang, CVPR 2017).

``facecomp.Completer`` is the inference API (arrays, PIL images or paths in; unaligned photos have their
faces found and aligned, and ``facecomp.NoFaceFound`` says when there is none); submodules are imported on
first use, so importing the package costs nothing.
"""

__version__ = "0.1.0"
__all__ = ["Completer", "NoFaceFound", "__version__"]


def __getattr__(name: str):
    if name == "Completer":
        from facecomp.complete import Completer

        return Completer
    if name == "NoFaceFound":
        from facecomp.faces import NoFaceFound

        return NoFaceFound
    raise AttributeError(f"module 'facecomp' has no attribute '{name}'")
