"""Train a GPT-style decoder from raw text with Spark and Horovod on Spark."""

__version__ = "0.1.0"
