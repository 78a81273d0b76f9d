import sys

from facecomp.cli import main

sys.exit(main())
