"""The message modules, generated from proto/ with protoc at run time, never committed."""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent.parent
DEFAULT_PROTO_DIR = HERE.parent.parent / "proto"
DEFAULT_BUILD_DIR = HERE / "build"


class SetupError(Exception):
    """The machine lacks what the agent needs (protoc, the proto files)."""


def _fingerprint(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def load(proto_dir: Path = DEFAULT_PROTO_DIR, build_dir: Path = DEFAULT_BUILD_DIR) -> dict[str, ModuleType]:
    """Generates the modules once per version of the .proto files and imports them by name (`ingest`, `rawlog`, ...)."""
    sources = sorted((proto_dir / "metering" / "v1").glob("*.proto"))
    if not sources:
        raise SetupError(f"no .proto files under {proto_dir / 'metering' / 'v1'}; give --proto-dir")
    target = build_dir / f"gen-{_fingerprint(sources)}"
    if not target.is_dir():
        protoc = shutil.which("protoc")
        if protoc is None:
            raise SetupError("protoc is not installed: apt-get install protobuf-compiler (or run .ci/ensure-python)")
        build_dir.mkdir(parents=True, exist_ok=True)
        # Generate beside the target and rename it into place, so that two agents starting at
        # once never import a half-written folder.
        scratch = Path(tempfile.mkdtemp(prefix="gen-", dir=build_dir))
        result = subprocess.run([protoc, f"-I{proto_dir}", f"--python_out={scratch}", *map(str, sources)],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            raise SetupError(f"protoc failed: {result.stderr.strip()}")
        try:
            os.rename(scratch, target)
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
            if not target.is_dir():
                raise
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    return {source.stem: importlib.import_module(f"metering.v1.{source.stem}_pb2") for source in sources}
