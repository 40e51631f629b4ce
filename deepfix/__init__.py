"""deepfix: restore degraded face images so forgery detectors see texture and structure.

The library layer: image I/O, sources, face detection, degradations, metrics, baselines,
models and the model store. Import submodules explicitly (``from deepfix import faces``);
nothing heavy is imported here.
"""

from deepfix.errors import DeepfixError

__version__ = "0.1.0"
__all__ = ["DeepfixError", "__version__"]
