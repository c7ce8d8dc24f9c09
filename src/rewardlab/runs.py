"""Run folders: each stage writes its artifacts into its own folder with a `manifest.json`.

A stage works in `RUN/.NAME.partial/` and is renamed to `RUN/NAME/` only when it has finished and
written its manifest, so nothing half-written is ever read. A re-run skips a stage whose manifest
fingerprint (config, seed, input hashes) matches (paths inside the run folder count from the folder, so a
moved or copied run keeps its finished stages); a killed stage finds its partial folder again and
may resume from checkpoints it left there.

    stage = Stage(run_dir, "ppo", config={"lr": 1e-5}, inputs={"base": world_dir / "base"}, seed=0)
    if not stage.done():
        train(out=stage.work)       # write into stage.work
        stage.commit()              # manifest + atomic rename to stage.out
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Mapping

from rewardlab.io import dumps, write_json

MANIFEST = "manifest.json"
_BIG_FILE = 64 << 20  # files above this are hashed by size plus head and tail, not in full


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers."""
    out = {"python": platform.python_version()}
    for name in ("rewardlab", "torch", "transformers", "tokenizers", "trl", "accelerate", "numpy", "scipy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= _BIG_FILE:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            h.update(f.read(1 << 20))
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read())
    return h.hexdigest()


def hash_path(path: str | os.PathLike) -> str:
    """Content hash of a file or a folder; a stage folder is identified by its manifest fingerprint."""
    path = Path(path)
    if path.is_file():
        return hash_file(path)
    if not path.is_dir():  # a hub name, not a local path
        return "name:" + str(path)
    manifest = path / MANIFEST
    if manifest.is_file():
        return "stage:" + json.loads(manifest.read_text())["fingerprint"]
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(hash_file(f).encode())
    return h.hexdigest()


RUN_DIR_MARK = "<run>"  # stands for the run folder in the paths a fingerprint hashes


def portable(value, run_dir: Path):
    """`value` (a config: dicts, lists, strings) with every path inside `run_dir` (absolute, resolved)
    written from RUN_DIR_MARK instead, so a run folder that is moved or copied keeps its fingerprints."""
    if isinstance(value, Mapping):
        return {k: portable(v, run_dir) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, run_dir) for v in value]
    if isinstance(value, str) and (value == str(run_dir) or value.startswith(str(run_dir) + os.sep)):
        return RUN_DIR_MARK + value[len(str(run_dir)):]
    return value


def fingerprint(config: Mapping, seed: int | None, input_hashes: Mapping[str, str]) -> str:
    payload = dumps({"config": config, "seed": seed, "inputs": dict(sorted(input_hashes.items()))})
    return hashlib.sha256(payload.encode()).hexdigest()


class Stage:
    """One stage of a run: a folder, its manifest, and whether it is already done."""

    def __init__(self, run_dir: str | os.PathLike, name: str, config: Mapping | None = None,
                 inputs: Mapping[str, str | os.PathLike] | None = None, seed: int | None = None):
        self.run_dir, self.name = Path(run_dir), name
        self.config = dict(config or {})
        self.seed = seed
        self.inputs = {k: str(v) for k, v in (inputs or {}).items()}
        self.input_hashes = {k: hash_path(v) for k, v in self.inputs.items()}
        self.fingerprint = fingerprint(portable(self.config, self.run_dir.resolve()), seed, self.input_hashes)
        self.out = self.run_dir / name
        self._started = time.time()

    @property
    def work(self) -> Path:
        """The folder to write into; kept across a kill so the stage can resume."""
        path = self.run_dir / f".{self.name}.partial"
        marker = path / ".fingerprint"
        if path.exists() and (not marker.is_file() or marker.read_text() != self.fingerprint):
            shutil.rmtree(path)  # partial work of another config: not ours to resume
        path.mkdir(parents=True, exist_ok=True)
        marker.write_text(self.fingerprint)
        return path

    def manifest(self) -> dict | None:
        path = self.out / MANIFEST
        return json.loads(path.read_text()) if path.is_file() else None

    def done(self) -> bool:
        manifest = self.manifest()
        return manifest is not None and manifest.get("fingerprint") == self.fingerprint

    def commit(self, extra: Mapping | None = None) -> Path:
        """Write the manifest into the work folder and move it into place atomically."""
        work = self.work
        (work / ".fingerprint").unlink()
        write_json(work / MANIFEST, {
            "stage": self.name,
            "fingerprint": self.fingerprint,
            "config": self.config,
            "seed": self.seed,
            "inputs": self.inputs,
            "input_hashes": self.input_hashes,
            "versions": package_versions(),
            "seconds": round(time.time() - self._started, 3),
            **dict(extra or {}),
        })
        if self.out.exists():
            trash = self.run_dir / f".{self.name}.old"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(self.out, trash)
            shutil.rmtree(trash)
        os.replace(work, self.out)
        return self.out
