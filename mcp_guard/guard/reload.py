"""Live reload: watch guard.yaml and the manifests folder (and take SIGHUP), and put a valid change
in force through Guard.reload. An invalid change keeps the last good policy and says why. Polls with
the standard library only; knows nothing of MCP."""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path

import anyio

from mcp_guard.config import GuardConfig
from mcp_guard.errors import ConfigError
from mcp_guard.guard.app import Guard
from mcp_guard.manifest import Manifest, load_deployment

POLL_INTERVAL = 1.0  # seconds between looks at the files
Snapshot = dict[str, tuple[int, int]]


def snapshot(config_path: Path, folder: Path) -> Snapshot:
    """The mtime and size of guard.yaml and of every file in the manifests folder."""
    paths = [config_path]
    with contextlib.suppress(OSError):  # a missing folder is reported when the policy is loaded
        paths += sorted(p for p in folder.iterdir() if p.is_file())
    seen: Snapshot = {}
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        seen[str(path)] = (st.st_mtime_ns, st.st_size)
    return seen


def load(config_path: Path) -> tuple[GuardConfig, tuple[Manifest, ...]]:
    return load_deployment(config_path)


async def reload_once(guard: Guard, config_path: Path) -> bool:
    """Load the files and put them in force; True if they were. A broken change keeps the policy
    in force, and the reason goes to stderr and into the ledger as a `policy` entry."""
    try:
        config, manifests = await anyio.to_thread.run_sync(load, config_path)
        policy = await guard.reload(config, manifests)
    except Exception as exc:  # whatever goes wrong, the guard serves on under the last good policy
        reason = str(exc) if isinstance(exc, ConfigError | OSError) else f"{type(exc).__name__}: {exc}"
        guard.log(f"reload rejected, the previous policy stays in force: {reason}")
        await guard.record_policy({"action": "rejected", "reason": guard.scrubber.record(reason)})
        return False
    guard.log(f"policy reloaded ({policy.hash[:12]})")
    return True


async def watch(
    guard: Guard,
    config_path: Path | None = None,
    *,
    interval: float = POLL_INTERVAL,
    signals: bool = True,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Reload whenever the files change (polled every `interval` seconds) or SIGHUP arrives; runs
    until cancelled. Started with `tg.start`, it returns once it is watching."""
    path = config_path or guard.policy.config.source
    last = snapshot(path, guard.policy.config.manifests)
    hup = anyio.Event()

    async def on_sighup() -> None:
        with anyio.open_signal_receiver(signal.SIGHUP) as received:
            async for _ in received:
                hup.set()

    async with anyio.create_task_group() as tg:
        if signals and sys.platform != "win32":
            tg.start_soon(on_sighup)
        task_status.started()
        while True:
            with anyio.move_on_after(interval):
                await hup.wait()
            forced = hup.is_set()
            hup = anyio.Event()
            seen = snapshot(path, guard.policy.config.manifests)
            if seen != last or forced:
                last = seen
                await reload_once(guard, path)
