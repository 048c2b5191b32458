"""rtsmlm: real-time single-molecule localization microscopy.

Importing the package is cheap: heavy optional parts (torch, TensorRT, Qt, pycromanager) are imported
inside the modules that use them.
"""

__version__ = "0.1.0"
