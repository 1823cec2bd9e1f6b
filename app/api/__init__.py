"""The HTTP service: ``create_app(settings)`` builds the FastAPI application."""

from app.api.main import create_app
from app.api.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
