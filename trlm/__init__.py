"""trlm: post-train tiny language models to reason, and sweep them at cluster scale."""

__version__ = "0.1.0"
