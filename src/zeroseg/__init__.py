"""zeroseg: generalized zero-shot segmentation."""

__version__ = "0.1.0"
