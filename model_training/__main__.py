"""``python -m model_training <command>``: synth, train, cv, evaluate, compare-auc, register."""

from model_training.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
