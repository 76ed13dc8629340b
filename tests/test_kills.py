"""Real SIGKILLs sent to real stage processes at named moments, and real disk faults (issue 21): what
the next run finds and what it leaves. tests/kill_harness.py holds the process still at the moment;
the kill is a real one. Full and read-only disks are small tmpfs mounts in a private mount namespace
(`unshare -rm`: no root needed, nothing left mounted)."""

import calendar
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, midtrain_recipe, once_per_session
from safetensors.torch import load_file, save_file

HARNESS = [sys.executable, str(REPO / "tests" / "kill_harness.py")]
SMOLALIGN = [sys.executable, "-m", "pipeline.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def wait_for_markers(marker_dir: Path, count: int, proc: subprocess.Popen, timeout: float = 300) -> list[int]:
    """The pids that reached the harness's moment, once `count` of them have."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = [int(p.name) for p in marker_dir.iterdir()]
        if len(pids) >= count:
            return pids
        if proc.poll() is not None:
            raise AssertionError(f"the stage ended (exit {proc.returncode}) before the moment:\n"
                                 + proc.stdout.read()[-3000:])
        time.sleep(0.1)
    raise AssertionError(f"the stage did not reach the moment within {timeout} s")


def sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped has released its files and locks: not alive)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def weights(path):
    return load_file(os.path.join(path, "model.safetensors"))


# ---- item 1 and item 12: killed while writing the last checkpoint -------------------------------
@pytest.fixture(scope="module")
def killed_while_saving(tmp_path_factory, uninterrupted_midtrain):
    """The uninterrupted run (conftest), and the same recipe SIGKILLed once checkpoint-4/optimizer.pt is on
    disk (its trainer_state.json not yet), then rerun to the end (once per session: two tests read it)."""

    def kill_and_rerun(root):
        recipe, markers = midtrain_recipe(root), root / "markers"
        markers.mkdir()
        proc = subprocess.Popen(HARNESS + ["optimizer:checkpoint-4", str(markers), "midtrain", "--recipe",
                                           str(recipe)],
                                cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for_markers(markers, 1, proc)
        finally:
            sigkill(proc)
        half = root / "runs" / "midtrain.partial" / "checkpoint-4"
        assert (half / "optimizer.pt").is_file() and not (half / "trainer_state.json").exists()
        killed_at = (half / "optimizer.pt").stat().st_mtime
        rerun = subprocess.run(SMOLALIGN + ["midtrain", "--recipe", str(recipe)], cwd=REPO, env=ENV,
                               capture_output=True, text=True, timeout=600)
        return {"root": str(root), "killed_at": killed_at,
                "rerun": {"returncode": rerun.returncode, "stdout": rerun.stdout, "stderr": rerun.stderr}}

    k = once_per_session(tmp_path_factory, "killed-while-saving", kill_and_rerun)
    root = Path(k["root"])
    return {"straight": uninterrupted_midtrain, "root": root, "out": root / "runs" / "midtrain",
            "rerun": subprocess.CompletedProcess(["smolalign"], **k["rerun"]), "killed_at": k["killed_at"]}


@pytest.mark.slow
@pytest.mark.e2e
def test_a_checkpoint_cut_short_is_set_aside_outside_the_run_and_outside_rotation(killed_while_saving):
    k = killed_while_saving
    assert k["rerun"].returncode == 0, k["rerun"].stderr[-3000:]
    out = k["out"]
    # save_total_limit 2 keeps checkpoints 2 and 4: the half-saved one was not counted by the rotation
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-2", "checkpoint-4"]
    assert not any("incomplete" in p.name for p in out.rglob("*")), "a half-saved checkpoint reached the run"
    aside = k["root"] / "runs" / "midtrain.incomplete" / "step-4"
    assert (aside / "optimizer.pt").is_file() and not (aside / "trainer_state.json").exists()
    assert "set aside" in k["rerun"].stdout and str(aside) in k["rerun"].stdout
    a, b = weights(k["straight"]), weights(out)
    assert all(torch.allclose(a[name], b[name], atol=1e-6) for name in a)


def test_only_the_main_rank_sets_a_checkpoint_aside_the_others_skip_it(tmp_path, monkeypatch):
    """Every rank of a multi-GPU job looks for checkpoints to resume from; had each moved the one cut
    short, the ranks would race on one rename and the losers fail (FileNotFoundError) on resume."""
    from pipeline.training.train import complete_checkpoints

    run = tmp_path / "sft.partial"
    for step, whole in ((2, True), (4, False)):
        ckpt = run / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        save_file({"w": torch.zeros(2)}, ckpt / "model.safetensors")
        if whole:
            (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    monkeypatch.setenv("RANK", "3")
    assert complete_checkpoints(run) == [run / "checkpoint-2"]
    assert (run / "checkpoint-4").is_dir() and not (tmp_path / "sft.incomplete").exists()
    monkeypatch.setenv("RANK", "0")
    assert complete_checkpoints(run) == [run / "checkpoint-2"]
    assert not (run / "checkpoint-4").exists() and (tmp_path / "sft.incomplete" / "step-4").is_dir()


@pytest.mark.parametrize("sharded", ["global_step4/mp_rank_00_model_states.pt",
                                     "pytorch_model_fsdp_0/__0_0.distcp"])
def test_a_checkpoint_of_sharded_weights_is_resumed_from_not_set_aside(tmp_path, sharded):
    """DeepSpeed without zero3_save_16bit_model and FSDP with SHARDED_STATE_DICT save the weights in their
    own layout (transformers writes no model.safetensors then): every such checkpoint was set aside as
    cut short, and the run restarted from step 0."""
    from pipeline.training.train import complete_checkpoints

    ckpt = tmp_path / "sft.partial" / "checkpoint-4"
    (ckpt / sharded).parent.mkdir(parents=True)
    (ckpt / sharded).write_bytes(b"weights")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    assert complete_checkpoints(ckpt.parent) == [ckpt] and not (tmp_path / "sft.incomplete").exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_a_killed_attempt_is_recorded_as_killed_with_its_last_sign_of_life(killed_while_saving):
    k = killed_while_saving
    assert k["rerun"].returncode == 0, k["rerun"].stderr[-3000:]
    manifest = json.loads((k["out"] / "manifest.json").read_text())
    killed, finished = manifest["attempts"]
    assert killed["status"] == "killed" and finished["status"] == "complete"
    assert killed["last_checkpoint"] == "checkpoint-2"  # the newest complete one it left
    last_seen = calendar.timegm(time.strptime(killed["last_seen_at"], "%Y-%m-%dT%H:%M:%SZ"))
    assert last_seen >= int(k["killed_at"])  # at least as late as the last file it wrote
    assert killed["duration_s"] > 0 and finished["duration_s"] > 0
    assert manifest["duration_s"] == pytest.approx(killed["duration_s"] + finished["duration_s"], abs=1e-3)


# ---- item 2: the main process killed while its data workers run ---------------------------------
@pytest.mark.slow
@pytest.mark.e2e
def test_killing_a_stage_while_it_builds_its_data_leaves_no_worker_holding_a_lock(tmp_path, tiny_model):
    rows = [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(1200)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    body = {"name": "t", "stage": "sft", "output_dir": str(tmp_path / "runs" / "sft"),
            "model": {"name_or_path": tiny_model, "dtype": "float32"},
            "data": {"sources": [{"path": str(tmp_path / "data.jsonl"), "mode": "no_think"}], "num_proc": 2},
            "training": {"max_steps": 1, "bf16": False, "max_length": 128, "packing": True}}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(body, sort_keys=False))
    env = {**ENV, "SMOLALIGN_CACHE": str(tmp_path / "cache")}
    markers = tmp_path / "markers"
    markers.mkdir()
    proc = subprocess.Popen(HARNESS + ["map-worker", str(markers), "sft", "--recipe", str(recipe)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: the test can clean up after it
    workers = []
    try:
        workers = wait_for_markers(markers, 2, proc)
        sigkill(proc)  # the main process only: its workers are not sent anything
        deadline = time.time() + 15
        while any(alive(pid) for pid in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in workers), "the data workers outlived the stage"
        locks = [tmp_path / "runs" / "sft.lock", *(tmp_path / "cache" / "mixtures").glob("*.lock")]
        assert len(locks) == 2
        for lock in locks:
            with open(lock) as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: raises BlockingIOError if held
        again = subprocess.run(SMOLALIGN + ["prepare", "--recipe", str(recipe)], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
    finally:
        try:  # whatever the stage started and left (its group holds only processes of this test)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_busy_lock_names_who_really_holds_it_and_a_waiting_run_says_what_it_waits_for(tmp_path, capfd):
    """The process named in a lock is gone but a process it left behind holds the lock (here `sleep`,
    handed the descriptor): the refusal names the real holder, not the dead pid; a run that waits for
    a lock says so and goes on once the holder is killed."""
    from pipeline.core.models import file_lock
    from pipeline.core.runs import RunError, run_lock

    lock = tmp_path / "runs" / "sft.lock"
    lock.parent.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, os, socket, subprocess, time
fh = open({str(lock)!r}, "a+")
fcntl.flock(fh, fcntl.LOCK_EX)
fh.write(f"pid {{os.getpid()}} on host {{socket.gethostname()}} since now\\n")
fh.flush()
child = subprocess.Popen(["sleep", "60"], pass_fds=[fh.fileno()])
print(child.pid, flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    left_behind = int(holder.stdout.readline())
    try:
        sigkill(holder)
        with pytest.raises(RunError, match=rf"in use by pid {left_behind} \(sleep 60\), left behind by pid "
                                           rf"{holder.pid}, which is no longer running"):
            with run_lock(tmp_path / "runs" / "sft"):
                pass
        import threading

        acquired = threading.Event()

        def wait_for_it():
            with file_lock(lock, "the data mixture M"):
                acquired.set()

        waiter = threading.Thread(target=wait_for_it, daemon=True)
        waiter.start()
        time.sleep(1)
        assert not acquired.is_set()
        assert f"waiting for {lock} (the data mixture M): held by pid {left_behind}" in capfd.readouterr().err
    finally:
        os.kill(left_behind, signal.SIGKILL)
    assert acquired.wait(10)


# ---- item 11: full and read-only disks, an unreachable Hub ID -----------------------------------
def in_private_mount(script: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a shell script in its own user + mount namespace, where it may mount tmpfs."""
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def sft_body(output_dir: Path, model: str, **training) -> dict:
    return {"name": "t", "stage": "sft", "output_dir": str(output_dir), "model": {"name_or_path": model,
            "dtype": "float32"}, "data": {"sources": [{"path": str(REPO / "data/demo/chat_no_think.jsonl"),
                                                       "mode": "no_think"}]},
            "training": {"max_steps": 2, "bf16": False, "max_length": 128, "packing": True,
                         "per_device_train_batch_size": 2, **training}}


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


@pytest.mark.slow
@pytest.mark.e2e
def test_a_full_disk_is_one_line_the_failure_is_recorded_and_the_rerun_finishes_clean(tmp_path, tiny_model):
    """A 20 MB tmpfs: the first checkpoint's optimizer.pt does not fit (torch says only "unexpected pos",
    no errno). Before: a traceback (exit 1), the failure not recorded, a 0-byte .manifest.json.<pid>.tmp
    left in the run dir (and promoted by the rerun)."""
    disk, seen = tmp_path / "disk", tmp_path / "seen"
    disk.mkdir(), seen.mkdir()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(sft_body(disk / "runs" / "sft", tiny_model, save_strategy="steps",
                                              save_steps=1), sort_keys=False))
    smolalign = f"{sys.executable} -m pipeline.cli sft --recipe {recipe}"
    result = in_private_mount(f"""
mount -t tmpfs -o size=20m tmpfs {disk} || exit 99
{smolalign} 2> {seen}/stderr; echo $? > {seen}/exit
ls -A {disk}/runs/sft.partial > {seen}/listing; cp {disk}/runs/sft.partial/manifest.json {seen}/failed.json
mount -o remount,size=200m {disk}
{smolalign} 2> {seen}/stderr2; echo $? > {seen}/exit2
ls -A {disk}/runs/sft > {seen}/listing2; cp {disk}/runs/sft/manifest.json {seen}/finished.json
""")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (seen / "exit").read_text().strip() == "2"
    line = one_error_line((seen / "stderr").read_text())
    assert f"the disk holding {disk}/runs/sft.partial is full" in line and "free space there" in line
    failed = json.loads((seen / "failed.json").read_text())
    assert failed["status"] == "failed" and failed["attempts"][-1]["status"] == "failed"
    assert "is full" in failed["error"]
    assert not any(name.endswith(".tmp") for name in (seen / "listing").read_text().split())
    assert (seen / "exit2").read_text().strip() == "0", (seen / "stderr2").read_text()[-3000:]
    finished_files = (seen / "listing2").read_text().split()
    assert not any(name.endswith(".tmp") or name == ".manifest-reserve" for name in finished_files), finished_files
    finished = json.loads((seen / "finished.json").read_text())
    assert [a["status"] for a in finished["attempts"]] == ["failed", "complete"]


@pytest.mark.slow
@pytest.mark.parametrize("read_only", ["cache", "output"])
def test_a_read_only_cache_or_output_dir_is_one_line_naming_it(tmp_path, tiny_model, read_only):
    ro = tmp_path / "ro"
    ro.mkdir()
    out = (ro if read_only == "output" else tmp_path) / "runs" / "sft"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(sft_body(out, tiny_model), sort_keys=False))
    cache = ro if read_only == "cache" else tmp_path / "cache"
    result = in_private_mount(f"""
mount -t tmpfs -o ro,size=1m tmpfs {ro} || exit 99
SMOLALIGN_CACHE={cache} exec {sys.executable} -m pipeline.cli sft --recipe {recipe}
""")
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result.stderr)
    assert "Read-only file system" in line and str(ro) in line
    if read_only == "cache":
        assert "SMOLALIGN_CACHE" in line
        manifest = json.loads((tmp_path / "runs" / "sft.partial" / "manifest.json").read_text())
        assert manifest["attempts"][-1]["status"] == "failed" and str(ro) in manifest["error"]
    else:
        assert "output_dir" in line


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_a_full_disk_while_loading_a_hub_id_is_not_called_unreachable(code):
    """A Hub dataset or model fails to load with an OSError when its cache's disk is full: that error goes
    on to the stage's disk handling (free space / SMOLALIGN_CACHE), not to 'download it with hf download'."""
    from pipeline.core.inputs import hub_errors

    with pytest.raises(OSError) as raised, hub_errors("HuggingFaceTB/smoltalk2", "data source", "dataset"):
        raise OSError(code, os.strerror(code), "/hf/datasets/smoltalk2.arrow")
    assert raised.type is OSError and raised.value.errno == code


@pytest.mark.parametrize("hub", ["model", "data source"])
def test_an_unreachable_hub_id_is_one_line(tmp_path, tiny_model, hub):
    body = sft_body(tmp_path / "runs" / "sft", "HuggingFaceTB/SmolLM3-3B" if hub == "model" else tiny_model)
    if hub == "data source":
        body["data"]["sources"] = [{"path": "HuggingFaceTB/smoltalk2", "name": "SFT", "split": "everyday",
                                    "mode": "no_think"}]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(body, sort_keys=False))
    env = {**ENV, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),  # offline, with an empty cache
           "SMOLALIGN_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(SMOLALIGN + ["sft", "--recipe", str(recipe)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result.stderr)
    if hub == "model":
        assert "model.name_or_path: HuggingFaceTB/SmolLM3-3B cannot be loaded" in line
    else:
        assert "data source: HuggingFaceTB/smoltalk2 cannot be loaded" in line and "--repo-type dataset" in line
    assert "hf download" in line


def test_a_full_disk_while_a_parquet_source_converts_is_not_called_unreadable(tmp_path):
    """A 2 MB parquet file whose Arrow copy goes to a 256 KB tmpfs: datasets raises a
    DatasetGenerationError over ENOSPC. Before: 'cannot read as parquet' (a UserError blaming the file);
    now the error goes on to the stage's disk handling, which names the full place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet, cache, seen = tmp_path / "rows.parquet", tmp_path / "cache", tmp_path / "seen.txt"
    pq.write_table(pa.table({"text": [os.urandom(500).hex() for _ in range(2000)]}), parquet)
    cache.mkdir()
    probe = tmp_path / "probe.py"
    probe.write_text("""
import sys
from pathlib import Path
from pipeline.core.errors import UserError
from pipeline.core.runs import disk_problem
from pipeline.core.schema import Source
from pipeline.data.sources import open_source
parquet, cache, seen = (Path(arg) for arg in sys.argv[1:])
try:
    open_source(Source(path=str(parquet), mode="no_think"), cache)
    result = "loaded"
except UserError as e:
    result = "user error: " + str(e)
except Exception as e:
    result = "disk: " + str(disk_problem(e, [cache]))
seen.write_text(result)
""")
    result = in_private_mount(f"mount -t tmpfs -o size=256k tmpfs {cache} || exit 99\n"
                              f"PYTHONPATH={REPO} {sys.executable} {probe} {parquet} {cache} {seen}", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    said = seen.read_text()
    assert said.startswith("disk: cannot write") and "No space left on device" in said, said


def test_a_file_that_is_not_parquet_is_still_one_line_naming_it(tmp_path):
    from pipeline.core.errors import UserError
    from pipeline.core.schema import Source
    from pipeline.data.sources import open_source

    bad = tmp_path / "rows.parquet"
    bad.write_text("not a parquet file\n")
    with pytest.raises(UserError, match=f"{bad}: cannot read as parquet"):
        open_source(Source(path=str(bad), mode="no_think"), tmp_path / "cache")
