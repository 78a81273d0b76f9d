import sys

from facecomp.cli import main

# Guarded: worker processes started by spawn (eval table --workers) import this module again.
if __name__ == "__main__":
    sys.exit(main())
