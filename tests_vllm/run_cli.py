"""`smolalign` for the tests: the real CLI, with one knob a test needs set from outside.

    SMOLALIGN_TEST_KILL_AT=K    SIGKILL a process group when synth's K-th generation is about to be stored
                                (generations in flight, at a known point): this one, engine included (a
                                machine lost), or
    SMOLALIGN_TEST_KILL_GROUP=G the group G instead (e.g. a `vllm serve` the run talks to; the run goes on,
                                and stores the K-th generation)
"""

import os
import signal
import sys

from pipeline.cli import main
from synth.store import ShardStore

if os.environ.get("SMOLALIGN_TEST_KILL_AT"):
    kill_at, added = int(os.environ["SMOLALIGN_TEST_KILL_AT"]), []
    group = int(os.environ.get("SMOLALIGN_TEST_KILL_GROUP") or os.getpgrp())
    add = ShardStore.add

    def add_or_die(self, row):
        added.append(1)
        if len(added) == kill_at:
            os.killpg(group, signal.SIGKILL)
        add(self, row)

    ShardStore.add = add_or_die

if __name__ == "__main__":  # vLLM spawns its engine process, which imports this module again
    sys.exit(main())
