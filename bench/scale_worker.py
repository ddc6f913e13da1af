"""A voxpipe worker with the benchmark engines registered (bench/vox_engines.py), for bench/scale.py.

python bench/scale_worker.py serve --config <file> --port <port>
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import vox_engines  # noqa: E402
from server.cli import main  # noqa: E402

if __name__ == "__main__":
    vox_engines.register()
    sys.exit(main(sys.argv[1:]))
