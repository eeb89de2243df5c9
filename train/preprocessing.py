"""Input checks and normalisation, kept importable as ``scnym.preprocessing``.

They are torch-free and live in :mod:`scnym.infer.preprocessing`, where
training, export and annotation all read them.
"""

from scnym.infer.preprocessing import *  # noqa: F403
from scnym.infer.preprocessing import __all__  # noqa: F401
