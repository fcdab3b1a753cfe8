"""`python -m launch` as one process of a multi-process test run (tests/test_multiprocess.py).

The tiny random policy of a short test never writes the answer format, so every reward would
be 0 and advantages would not depend on how groups are assembled. This harness judges the
format by a deterministic property of the completion text instead (even length), so rewards
vary within and across groups and across processes; everything else is the real stage code.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from skinr1_jax.train import rewards  # noqa: E402

rewards.ResponseParser.format_ok = lambda self, text: int(len(text) % 2 == 0)

from launch.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv))
