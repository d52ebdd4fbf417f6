"""slamkit: a small, fast, faithful Hydra + Hugging Face SFT library.

The library takes plain typed arguments; only ``cli/`` touches Hydra.
"""

__version__ = "0.1.0"
