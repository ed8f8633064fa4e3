"""The web demo and HTTP API: `create_app(model)` gives a FastAPI app; `tinytales serve` runs it."""
from .app import create_app
from .safety import SafetyFilter

__all__ = ["create_app", "SafetyFilter"]
