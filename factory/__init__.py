"""A synthetic pretraining data factory: seeds -> teacher -> recipes -> generate -> curate -> tokenize -> mix."""

__version__ = "0.1.0"
