"""Files to and from a lent GPU machine, cut to its transfer limits and checked by sha256.

The device tool carries at most 64 MiB of working tree per call, the repository included, and
brings back at most 8 files of at most 16 MiB, 64 MiB together, from ``$OUT``
(/work/.library/device/README.md). Neither the MiniLM warm start (43 MiB even in bf16) plus a
training shard nor a run's fp32 weights (89 MiB) fit whole, so both directions use one format:
the files are concatenated in a fixed order and cut into ``piece-NN.bin`` pieces, and
``index.json`` lists every file and every piece with its size and sha256. ``join_pieces``
checks each piece before it uses it and each file after rebuilding it, so a truncated or
mixed-up transfer is an error, never a silently different model.

Upload: ``pack_upload`` puts one piece in each of ``call1/``, ``call2/``..., each small enough
to carry beside the repository in one call; scripts/device_train.sh stages them on the
device and joins them there. Download: ``split_run`` writes a run's final weights (as bf16:
fp32 would not fit in 64 MiB), config.json, tokenizer.json and metrics.jsonl into ``$OUT``;
``join_run`` rebuilds a run folder here that ``electric export`` reads.

Only the standard library, torch and safetensors are imported: this runs on the device.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model_export.run_files import FINAL, METRICS

INDEX = "index.json"
MIB = 2**20
PIECE_BYTES = 16 * MIB
# $OUT brings back at most this many files (index.json included) and bytes.
RETURN_FILES, RETURN_BYTES = 8, 64 * MIB
RUN_FILES = (FINAL, "config.json", "tokenizer.json", METRICS)
# What a BERT-family folder needs to be a warm start (warmstart.read_hf_config, read_checkpoint).
WARM_FILES = ("config.json", "tokenizer.json", "model.safetensors")
TRANSPORT_KEY = "transport_dtype"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def split_files(root: Path, names: list[str], out: Path, piece_bytes: int = PIECE_BYTES
                ) -> dict[str, Any]:
    """Cut ``root/name`` for each of ``names`` (relative paths, in order) into pieces in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = [{"name": n, "bytes": (root / n).stat().st_size, "sha256": _sha256(root / n)}
             for n in names]
    pieces: list[dict[str, Any]] = []
    piece = None
    for name in names:
        with open(root / name, "rb") as src:
            while block := src.read(min(MIB, piece_bytes)):
                while block:
                    if piece is None or piece.tell() == piece_bytes:
                        if piece is not None:
                            piece.close()
                        pieces.append({"name": f"piece-{len(pieces):02d}.bin"})
                        # Pieces roll over mid-file, so no with-block can own one.
                        piece = open(out / pieces[-1]["name"], "wb")  # noqa: SIM115
                    room = piece_bytes - piece.tell()
                    piece.write(block[:room])
                    block = block[room:]
    if piece is not None:
        piece.close()
    for p in pieces:
        p.update(bytes=(out / p["name"]).stat().st_size, sha256=_sha256(out / p["name"]))
    index = {"files": files, "pieces": pieces}
    (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return index


def join_pieces(folder: Path, dest: Path) -> list[Path]:
    """Rebuild the files that ``folder/index.json`` lists into ``dest``; every hash is checked."""
    index = json.loads((folder / INDEX).read_text())
    missing = [p["name"] for p in index["pieces"] if not (folder / p["name"]).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks pieces {missing} of {len(index['pieces'])}")
    for p in index["pieces"]:
        size, digest = (folder / p["name"]).stat().st_size, _sha256(folder / p["name"])
        if (size, digest) != (p["bytes"], p["sha256"]):
            raise ValueError(f"{folder / p['name']}: {size} bytes, sha256 {digest[:12]}...; "
                             f"index.json says {p['bytes']} bytes, {p['sha256'][:12]}...")
    stream = (folder / p["name"] for p in index["pieces"])
    current, written = None, []
    for entry in index["files"]:
        target = dest / entry["name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        left = entry["bytes"]
        with open(target, "wb") as out:
            while left:
                if current is None or not (block := current.read(min(left, MIB))):
                    if current is not None:
                        current.close()
                    current = open(next(stream), "rb")  # noqa: SIM115 (rolls over)
                    continue
                out.write(block)
                left -= len(block)
        if _sha256(target) != entry["sha256"]:
            raise ValueError(f"{target} rebuilt from the pieces does not match its sha256")
        written.append(target)
    if current is not None:
        current.close()
    return written


def pack_upload(files: dict[str, Path], out: Path, call_bytes: int) -> list[Path]:
    """Pieces of ``files`` (name in the bundle -> source) in ``out/call1``, ``out/call2``...:
    one piece of at most ``call_bytes`` less a MiB (for index.json) per call, index.json in
    each. An upload has no per-file limit, so a piece fills its call. Returns the folders."""
    piece_bytes = call_bytes - MIB
    if piece_bytes < MIB:
        raise ValueError(f"call_bytes {call_bytes} leaves no room for a piece (at least 2 MiB)")
    if out.exists():
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        for name, source in files.items():
            (staged / name).parent.mkdir(parents=True, exist_ok=True)
            (staged / name).symlink_to(source.resolve())
        index = split_files(staged, list(files), out / "pieces", piece_bytes)
    folders = []
    for number, piece in enumerate(index["pieces"], start=1):
        folder = out / f"call{number}"
        folder.mkdir()
        (out / "pieces" / piece["name"]).rename(folder / piece["name"])
        shutil.copyfile(out / "pieces" / INDEX, folder / INDEX)
        folders.append(folder)
    shutil.rmtree(out / "pieces")
    return folders


def write_portable_warm_start(source: Path, out: Path, dtype: torch.dtype = torch.bfloat16
                              ) -> Path:
    """``source``'s encoder (what warmstart.load_bert_encoder reads) as ``dtype`` safetensors,
    with its config.json and tokenizer.json: a warm-start folder small enough to carry."""
    from model_export.warmstart import (
        BUFFERS,
        ENCODER_PARTS,
        checkpoint_name,
        read_checkpoint,
        read_hf_config,
    )

    read_hf_config(source)
    if not (source / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{source} has no tokenizer.json; train needs one beside it")
    tensors = {name: t.to(dtype) if t.is_floating_point() else t
               for name, t in read_checkpoint(source).items()
               if checkpoint_name(name).startswith(ENCODER_PARTS)
               and checkpoint_name(name) not in BUFFERS}
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"source": source.name, "dtype": str(dtype).removeprefix("torch.")})
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(source / name, out / name)
    return out


def _recast(path: Path, dtype: torch.dtype, out: Path) -> None:
    """``path``'s floating tensors as ``dtype`` in ``out``, metadata kept; ``transport_dtype``
    is set when narrowing and dropped when widening back."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(path).items()}
    if dtype == torch.float32:
        meta.pop(TRANSPORT_KEY, None)
    else:
        meta[TRANSPORT_KEY] = str(dtype).removeprefix("torch.")
    save_file(tensors, str(out), metadata=meta)


def split_run(run_dir: Path, out: Path, dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """The files ``electric export`` needs from ``run_dir``, as pieces in ``out`` ($OUT).

    The weights travel as ``dtype`` (bf16: a MiniLM-sized run is 89 MiB in fp32, over the
    64 MiB that ``$OUT`` brings back). Refuses to write more than $OUT returns.
    """
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        names = [n for n in RUN_FILES if (run_dir / n).is_file()]
        lacking = sorted({FINAL, "config.json", "tokenizer.json"} - set(names))
        if lacking:
            raise FileNotFoundError(f"{run_dir} lacks {lacking}: not a finished run")
        for name in names:
            if name == FINAL:
                _recast(run_dir / name, dtype, staged / name)
            else:
                shutil.copyfile(run_dir / name, staged / name)
        total = sum((staged / n).stat().st_size for n in names)
        count = -(-total // PIECE_BYTES) + 1
        if count > RETURN_FILES or total > RETURN_BYTES - MIB:
            raise ValueError(f"the run's files are {total / MIB:.1f} MiB in {count} files; "
                             f"$OUT returns at most {RETURN_FILES} files and "
                             f"{RETURN_BYTES // MIB} MiB")
        return split_files(staged, names, out)


def join_run(pieces: Path, run_dir: Path) -> Path:
    """Rebuild a run folder from ``split_run``'s pieces; the weights are widened back to fp32
    (``training.transport_dtype`` in config.json records the rounding). Returns final's path."""
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        join_pieces(pieces, staged)
        with safe_open(str(staged / FINAL), framework="pt") as f:
            narrowed = (f.metadata() or {}).get(TRANSPORT_KEY)
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            if (staged / name).is_file() and name != FINAL:
                shutil.copyfile(staged / name, run_dir / name)
        _recast(staged / FINAL, torch.float32, run_dir / FINAL)
    if narrowed:
        config = json.loads((run_dir / "config.json").read_text())
        config.setdefault("training", {})[TRANSPORT_KEY] = narrowed
        (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return run_dir / FINAL
