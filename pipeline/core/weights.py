"""Whole-file checks of weight files, without loading a tensor: is a checkpoint or a model directory
whole, or was a file cut short (a kill or a full disk while saving, a copy that did not finish)?

A safetensors file is 8 bytes of header length N, N bytes of JSON header (each tensor's dtype, shape
and `data_offsets` [begin, end) into the data that follows), then the data. It is whole when its header
parses and its length is exactly 8 + N + the largest end offset: that reads a few kilobytes of a 6 GB
file. A torch file (`optimizer.pt`, `pytorch_model.bin`) is a zip archive whose directory sits at its
end, so one cut short no longer opens as a zip. Used wherever a checkpoint or a run is trusted:
resuming (pipeline/core/runs.py is_complete_checkpoint), a run or model directory named as a stage's input
(pipeline/core/inputs.py), the merge's checks, and a run's promotion.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

SAFETENSORS_INDEX = "model.safetensors.index.json"
HEADER_LIMIT = 100 << 20  # the safetensors library refuses headers above 100 MB
TORCH_SUFFIXES = (".bin", ".pt", ".pth")


def safetensors_problem(path: Path) -> str | None:
    """None when `path` is a whole safetensors file, else what is wrong with it, in a few words.

        >>> safetensors_problem(Path("model.safetensors"))  # doctest: +SKIP
        'cut short: 4,194,312 bytes of the 8,388,664 its header describes'
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"cut short: {size} bytes, less than a safetensors header"
            length = int.from_bytes(head, "little")
            if length > HEADER_LIMIT:
                return f"not a safetensors file (its first 8 bytes give a header of {length:,} bytes)"
            if 8 + length > size:
                return f"cut short: {size:,} bytes, less than its {8 + length:,}-byte header"
            header = json.loads(fh.read(length))
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    except (UnicodeDecodeError, ValueError):
        return "its header is not valid JSON (damaged, or not a safetensors file)"
    end = _data_end(header)
    if end is None:
        return "its header does not describe tensors (damaged, or not a safetensors file)"
    expected = 8 + length + end
    if size < expected:
        return f"cut short: {size:,} bytes of the {expected:,} its header describes"
    if size > expected:
        return f"{size - expected:,} bytes longer than its header describes (damaged)"
    return None


def _data_end(header) -> int | None:
    """The largest end offset of the header's tensors (0 for none), or None when it is not a header."""
    if not isinstance(header, dict):
        return None
    end = 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        offsets = tensor.get("data_offsets") if isinstance(tensor, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            return None
        end = max(end, offsets[1])
    return end


def torch_file_problem(path: Path) -> str | None:
    """None when a torch.save file (a zip archive, torch's format since 1.6) is whole; a file in the legacy
    pickle format cannot be judged this way and passes."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"PK\x03\x04":
                return None
        with zipfile.ZipFile(path):
            return None
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    except zipfile.BadZipFile:
        return f"cut short: {path.stat().st_size:,} bytes and no end of archive (torch.save files are zip archives)"


def weights_problem(directory: Path) -> str | None:
    """The first damaged weight file of a checkpoint or model directory, as `<file>: <problem>`, or None:
    its safetensors files, the shards its safetensors index names, and its torch files (optimizer and
    scheduler states included). Sub-directories (DeepSpeed's global_stepN/, other checkpoints) are not read."""
    index = directory / SAFETENSORS_INDEX
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{index}: not a whole safetensors index (no weight_map)"
        missing = sorted(name for name in shards if not (directory / name).is_file())
        if missing:
            return f"{directory / missing[0]}: missing ({len(missing)} of the {len(shards)} shards its index names)"
    for path in sorted(directory.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            return f"{path}: {problem}"
    for path in sorted(p for p in directory.iterdir() if p.suffix in TORCH_SUFFIXES and p.is_file()):
        problem = torch_file_problem(path)
        if problem:
            return f"{path}: {problem}"
    return None
