"""slmlib: data, rendering, models and runs for fine-tuning small language models for tool calling."""

__version__ = "0.1.0"
