"""The `plumb` CNI executable: built from `cni/shim/plumb.c`, found by everything that runs it.

One statically linked binary (no Python, shell or socat needed on the node; see the source's
header for why C). `path()` gives the build for this checkout, compiling it first when it is
missing or older than its source; `python -m cni.executable` does the same from the command
line (scripts/setup.sh, the image's build stage). Builds land under `build/cni/`, written to a
temporary name and renamed, so a concurrent build or a running runtime never sees half a file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

SOURCE: Final = Path(__file__).resolve().parent / "shim" / "plumb.c"
BUILD_DIR: Final = SOURCE.parents[2] / "build" / "cni"
NAME: Final = "plumb"
# Static, so the binary runs on any Linux node of the same architecture (kind's, a VM's).
CFLAGS: Final = ("-O2", "-static", "-std=c11", "-Wall", "-Wextra", "-Werror")


class BuildError(RuntimeError):
    """No C compiler, or the source did not compile (the compiler's words attached)."""


def path(build_dir: Path = BUILD_DIR) -> Path:
    """The executable for this checkout, built now if missing or older than its source."""
    target = build_dir / NAME
    if not _is_current(target):
        build(target)
    return target


def bin_dir(build_dir: Path = BUILD_DIR) -> Path:
    """The directory holding the executable (a CNI_PATH entry), built now if needed."""
    return path(build_dir).parent


def build(target: Path) -> Path:
    """Compile the source into `target` (atomically replaced); return it."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise BuildError("no C compiler (cc or gcc) to build the plumb CNI executable")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(prefix=f".{NAME}.", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, *CFLAGS, "-o", scratch, str(SOURCE)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise BuildError(f"{compiler} failed on {SOURCE}:\n{done.stderr.strip()}")
        os.chmod(scratch, 0o755)
        os.replace(scratch, target)
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)
    return target


def _is_current(target: Path) -> bool:
    try:
        return target.stat().st_mtime >= SOURCE.stat().st_mtime
    except FileNotFoundError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cni.executable", description="Build the plumb CNI executable."
    )
    parser.add_argument(
        "--output", type=Path, help="where to put it (default: build/cni/plumb, if stale)"
    )
    args = parser.parse_args(argv)
    try:
        built = build(args.output) if args.output else path()
    except BuildError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(built)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
