"""``python -m app <command>``: inspect, convert, model-info, predict, serve."""

from app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
