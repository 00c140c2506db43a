"""Where the real annotation samples live (../shared/data/real-samples next to the repository).

They are never copied into the project; tests that need them skip with the reason when absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_SAMPLES = REPO_ROOT.parent / "shared" / "data" / "real-samples"


def real_samples(*parts: str) -> Path:
    """Path of a file or folder under the real samples, or skip the test saying what is missing."""
    path = REAL_SAMPLES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real sample {path} is absent (the tests read ../shared/data/real-samples/, see SOURCES.md)")
    return path
