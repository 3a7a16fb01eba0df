"""The execution providers normonnx knows: one table, imported everywhere (argparse ``choices`` too).

Two words, one meaning each:

- a **provider** is where onnxruntime runs a model, named by normonnx's short name: ``"cpu"``,
  ``"cuda"`` (a key of :data:`PROVIDERS`). ``session(..., provider=)``, ``verify(provider=)``,
  the capability table and ``--provider`` take one. onnxruntime's own spelling
  (``"CPUExecutionProvider"``) is the provider's :func:`ort_name`, used only when talking to
  onnxruntime.
- a **target** is the provider a graph is *built for*: ``export(target=)``,
  ``optimize_model(target=)`` and ``--target`` lower every norm for it. A target is always a
  provider; the word says the graph is shaped for it, not that anything runs there yet.

This module imports nothing: the CLI builds its parser from it without loading onnxruntime.
"""

from __future__ import annotations

#: short name → onnxruntime's execution provider name, in preference order ("cpu" first: the default)
PROVIDERS: dict[str, str] = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
#: the short names, in order: ``choices=`` of every ``--provider`` / ``--target`` flag
NAMES: tuple[str, ...] = tuple(PROVIDERS)
DEFAULT = "cpu"
_SHORT = {v: k for k, v in PROVIDERS.items()}


def ort_name(provider: str) -> str:
    """``"cuda"`` → ``"CUDAExecutionProvider"`` (KeyError for an unknown short name)."""
    return PROVIDERS[provider]


def short_name(ort_provider: str) -> str:
    """``"CUDAExecutionProvider"`` → ``"cuda"``; a provider normonnx does not know keeps its name."""
    return _SHORT.get(ort_provider, ort_provider)


__all__ = ["DEFAULT", "NAMES", "PROVIDERS", "ort_name", "short_name"]
