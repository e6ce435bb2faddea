"""The test suite; tests/<package>/<sub-package>/test_<module>.py mirrors the code."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the repository root
