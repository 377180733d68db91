"""Where the repository's committed files are: the weights that ship with the code.

MVMIC runs from its checkout (`make run`, the Docker images, an editable install), so the weights are found
beside the package: REPO_ROOT/weights.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = REPO_ROOT / "weights"
