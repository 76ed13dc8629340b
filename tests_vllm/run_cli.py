"""`smolalign` for the tests: the real CLI, with two knobs a test needs set from outside.

    SMOLALIGN_TEST_BATCH=N      synth's batch size (prompts between two fsyncs of the shard file)
    SMOLALIGN_TEST_KILL_AT=K    SIGKILL a process group when the K-th batch is about to be written (a batch
                                in flight, at a known point): this one, engine included (a machine lost), or
    SMOLALIGN_TEST_KILL_GROUP=G the group G instead (e.g. a `vllm serve` the run talks to; the run goes on)
"""

import os
import signal
import sys

import synth.stage
from pipeline.cli import main
from synth.store import ShardStore

if os.environ.get("SMOLALIGN_TEST_BATCH"):
    synth.stage.BATCH = int(os.environ["SMOLALIGN_TEST_BATCH"])

if os.environ.get("SMOLALIGN_TEST_KILL_AT"):
    kill_at, appended = int(os.environ["SMOLALIGN_TEST_KILL_AT"]), []
    group = int(os.environ.get("SMOLALIGN_TEST_KILL_GROUP") or os.getpgrp())
    append = ShardStore.append

    def append_or_die(self, rows):
        appended.append(1)
        if len(appended) == kill_at:
            os.killpg(group, signal.SIGKILL)
        append(self, rows)

    ShardStore.append = append_or_die

if __name__ == "__main__":  # vLLM spawns its engine process, which imports this module again
    sys.exit(main())
