"""facecomp: generative face completion (Li, Liu, Yang, Yang, CVPR 2017).

``facecomp.Completer`` is the inference API; submodules are imported on first use, so importing the
package costs nothing.
"""

__version__ = "0.1.0"
__all__ = ["Completer", "__version__"]


def __getattr__(name: str):
    if name == "Completer":
        from facecomp.complete import Completer

        return Completer
    raise AttributeError(f"module 'facecomp' has no attribute '{name}'")
