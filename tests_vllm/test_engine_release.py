"""`VLLMBackend.close()` stops the engine's process even while something still refers to the engine
(a traceback, a cycle): the next model's engine must never start beside it.

    make test-vllm
"""

from __future__ import annotations

import os

import psutil
from test_synth_eval_vllm import engine_processes

from pipeline.generation import VLLMBackend


def test_close_stops_the_engine_process_while_a_reference_survives(smollm2):
    backend = VLLMBackend(smollm2, dtype="float32", enforce_eager=True)
    engines = engine_processes(os.getpid())
    assert len(engines) == 1, "vLLM runs its engine core in a child process"
    survivor = backend.llm  # what a traceback or a reference cycle would keep alive
    backend.close()
    _, alive = psutil.wait_procs(engines, timeout=60)
    assert not alive, "the engine process outlived close()"
    assert not hasattr(backend, "llm")
    del survivor
