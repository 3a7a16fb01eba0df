"""onnxruntime: capability probes and sessions that verify the provider they got."""

from .probe import available_providers, ort_max_opset, ort_version
from .session import PROVIDER_NAMES, Session, session

__all__ = ["PROVIDER_NAMES", "Session", "available_providers", "ort_max_opset", "ort_version", "session"]
