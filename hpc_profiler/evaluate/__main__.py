"""``python -m hpc_profiler.evaluate CONFIG`` (same as ``hpc-profiler evaluate``)."""
import sys

from .run import main

sys.exit(main())
