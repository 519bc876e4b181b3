"""``python -m flatten_video ...`` (what ``accelerate launch -m flatten_video`` runs in every process)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
