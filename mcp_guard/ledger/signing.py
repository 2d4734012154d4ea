"""Signed checkpoints, as files: the Ed25519 key pair (`ledger keygen`), one checkpoint as a signed
JSON line, and the append-only `checkpoints.jsonl` they go to. What a checkpoint is checked against
is checkpoints.py. Imports nothing from mcp_guard but errors and the ledger's chain (the Anchor a
checkpoint signs); `cryptography` does the signing."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mcp_guard.errors import ConfigError
from mcp_guard.ledger.chain import Anchor

PRIVATE_FILE = "checkpoint.key"
PUBLIC_FILE = "checkpoint.pub"
LOG_FILE = "checkpoints.jsonl"
VERSION = 1
DOMAIN = b"mcp-guard ledger checkpoint v1\x00"
"""Domain separation: a checkpoint's signature can never be taken for a signature of anything else."""
MAX_KEY_BYTES = 16 * 1024
_HASH = re.compile(r"^[0-9a-f]{64}$")
_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
_FIELDS = {"v", "ledger", "entry_id", "entry_hash", "entries", "ts", "key", "sig"}


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One signed, well-formed checkpoint line (its signature checked), and where it was read."""

    anchor: Anchor
    ts: str
    line: int


# -- keys -----------------------------------------------------------------------------------------


def keygen(directory: Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair into `directory` (created 0700 if missing): the private key
    readable by its owner only (0600), the public key 0644. Never overwrites a key."""
    private_path, public_path = directory / PRIVATE_FILE, directory / PUBLIC_FILE
    for path in (private_path, public_path):
        if path.exists():
            msg = "already exists; a key is never overwritten (move it away first)"
            raise ConfigError(str(path), "", msg)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(str(directory), "", f"cannot create the directory ({exc.strerror})") from None
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, pem, 0o600)
    _write_new(public_path, public, 0o644)
    return private_path, public_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot write ({exc.strerror})") from None
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_key_file(path: Path) -> bytes:
    try:
        if not path.is_file():
            raise ConfigError(str(path), "", "no such key file")
        if path.stat().st_size > MAX_KEY_BYTES:
            raise ConfigError(str(path), "", "is not a PEM key file (too large)")
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read the key file ({exc.strerror})") from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The signing key; refused unless only its owner can read it (mode 0600 or stricter)."""
    data = _read_key_file(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        msg = f"the private key can be read by others (mode {mode:04o}); chmod 600 it"
        raise ConfigError(str(path), "", msg)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        msg = "is not an unencrypted PEM private key"
        msg += " (it needs a password)" if "password" in str(exc) else ""
        raise ConfigError(str(path), "", msg) from None
    except Exception:  # cryptography raises UnsupportedAlgorithm and others for odd input
        raise ConfigError(str(path), "", "is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(str(path), "", "is not an Ed25519 key (make one with `mcp-guard ledger keygen`)")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_public_key(data)
    except Exception:  # ValueError, UnsupportedAlgorithm, ...: not a key we can use
        raise ConfigError(str(path), "", "is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(str(path), "", "is not an Ed25519 public key")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    """A short name for a public key: the first 16 hex digits of the SHA-256 of its raw bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# -- one checkpoint ---------------------------------------------------------------------------------


def _canonical(fields: dict[str, object]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(anchor: Anchor, key: Ed25519PrivateKey, ts: str) -> str:
    """The checkpoint line (no newline): its fields and the Ed25519 signature of the domain and
    their canonical JSON."""
    fields: dict[str, object] = {
        "v": VERSION,
        "ledger": anchor.ledger,
        "entry_id": anchor.entry_id,
        "entry_hash": anchor.entry_hash,
        "entries": anchor.entries,
        "ts": ts,
        "key": key_id(key.public_key()),
    }
    signature = base64.b64encode(key.sign(DOMAIN + _canonical(fields))).decode()
    return _canonical({**fields, "sig": signature}).decode()


def parse(text: str, key: Ed25519PublicKey, line: int) -> Checkpoint | str:
    """The checkpoint on a line, its signature checked with `key`; or what is wrong with it."""
    try:
        fields = json.loads(text)
    except ValueError:
        return "not a checkpoint (garbled, or cut short)"
    if not isinstance(fields, dict) or set(fields) != _FIELDS:
        return "not a checkpoint (its fields are not those of one)"
    if fields["v"] != VERSION or type(fields["v"]) is not int:
        return f"a checkpoint of an unknown version {fields['v']!r}"
    well_formed = (
        all(type(fields[k]) is int and fields[k] >= 0 for k in ("entry_id", "entries"))
        and all(isinstance(fields[k], str) and _HASH.match(fields[k]) for k in ("ledger", "entry_hash"))
        and isinstance(fields["ts"], str)
        and _TS.match(fields["ts"])
        and isinstance(fields["key"], str)
        and isinstance(fields["sig"], str)
    )
    if not well_formed:
        return "not a checkpoint (a field has the wrong type or form)"
    if fields["key"] != key_id(key):
        return f"signed by another key (key id {fields['key'][:16]!r}, not {key_id(key)!r})"
    signature = fields.pop("sig")
    try:
        key.verify(base64.b64decode(signature, validate=True), DOMAIN + _canonical(fields))
    except (InvalidSignature, ValueError):
        return "bad signature: forged, or altered after it was signed"
    anchor = Anchor(fields["ledger"], fields["entry_id"], fields["entry_hash"], fields["entries"])
    return Checkpoint(anchor, fields["ts"], line)


# -- the file -----------------------------------------------------------------------------------------


def append(directory: Path, line: str) -> None:
    """Append one line to DIR/checkpoints.jsonl in one write (O_APPEND: guards sharing the
    directory never interleave), and fsync it."""
    path = directory / LOG_FILE
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(directory: Path) -> list[str]:
    """The lines of DIR/checkpoints.jsonl ([] if there is no file yet); ConfigError for a DIR that
    is not a directory."""
    if not directory.is_dir():
        raise ConfigError(str(directory), "", "no such checkpoints directory")
    path = directory / LOG_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read ({exc.strerror})") from None
    if not data:
        return []
    return data.decode("utf-8", errors="replace").split("\n")[: -1 if data.endswith(b"\n") else None]


def latest(directory: Path, key: Ed25519PublicKey) -> Checkpoint | None:
    """The last line that is a valid checkpoint signed by `key`, reading from the end."""
    lines = read_lines(directory)
    for number in range(len(lines), 0, -1):
        found = parse(lines[number - 1], key, number)
        if isinstance(found, Checkpoint):
            return found
    return None
