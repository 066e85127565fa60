"""``sw`` starts fast: building its parser imports neither torch nor the S3 SDK."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "minio", "arq")


def test_building_the_parser_leaves_heavy_libraries_unimported() -> None:
    code = (
        "import sys\n"
        "from sw_core.cli import build_parser\n"
        "build_parser().parse_args(['stats'])\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "", f"imported at start-up: {out.stdout.strip()}"
