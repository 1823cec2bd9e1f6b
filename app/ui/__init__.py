"""The web page served at ``/ui/``: static HTML, CSS and JavaScript (no build step, nothing fetched from outside
the service). Shipped as package data; :data:`STATIC_DIR` is the folder served."""

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
