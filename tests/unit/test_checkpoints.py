"""Signed checkpoints on real ledger files: each attack done for real (a cut-off tail with its
sequence reset and triggers restored, a rewrite with recomputed hashes, a replaced file, forged and
damaged checkpoint lines), every bad key and directory, and the command line as users run it
(`mcp_guard.cli.main.main`, in this process)."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import anyio
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mcp_guard.cli.main import main
from mcp_guard.config import CheckpointsConfig, LedgerConfig
from mcp_guard.errors import ConfigError
from mcp_guard.ledger import PolicyEvent, open_ledger
from mcp_guard.ledger.chain import COLUMNS, ZERO_HASH, entry_hash
from mcp_guard.ledger.checkpoints import keep_checkpoints, signing_key
from mcp_guard.ledger.entries import CallRecord
from mcp_guard.ledger.signing import LOG_FILE, keygen, load_private_key, sign
from mcp_guard.ledger.sqlite.engine import Ledger
from mcp_guard.ledger.sqlite.verify import TRIGGERS
from tests.helpers import inprocess_guard

POLICY = "ab" * 32


class Site:
    """A guard.yaml with `ledger.checkpoints`, its key pair and checkpoints directory, and a ledger."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ledger = root / "ledger.db"
        self.keys = root / "keys"
        self.dir = root / "checkpoints"
        self.dir.mkdir(parents=True)
        keygen(self.keys)
        self.config = root / "guard.yaml"
        ledger = {"path": "ledger.db", "checkpoints": {"key": "keys/checkpoint.key", "dir": "checkpoints"}}
        self.config.write_text(yaml.safe_dump({"ledger": ledger}))

    def append(self, n: int, agent: str = "support-bot") -> None:
        with Ledger.open(self.ledger) as ledger:
            for i in range(n):
                rec = CallRecord(uuid.uuid4().hex, agent, None, "billing", "refund", {"amount": i}, "allow",
                                 None, None, POLICY)  # fmt: skip
                ledger.record_decision(rec)
                ledger.record_outcome(rec.call_id, "ok", 1.5)

    def run(self, *args: str) -> int:
        return main(["--config", str(self.config), "ledger", *args])

    def verify(self, *extra: str) -> int:
        pub = str(self.keys / "checkpoint.pub")
        return self.run("verify", "--checkpoints", str(self.dir), "--public-key", pub, *extra)

    def lines(self) -> list[str]:
        return (self.dir / LOG_FILE).read_text().splitlines()

    def write_lines(self, lines: list[str]) -> None:
        (self.dir / LOG_FILE).write_text("".join(line + "\n" for line in lines))

    def sql(self, *statements: str) -> None:
        conn = sqlite3.connect(self.ledger, isolation_level=None)
        for statement in statements:
            conn.execute(statement)
        conn.close()


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def out_of(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    return captured.out + captured.err


def rehash_from(path: Path, first: int) -> None:
    """Recompute every entry_hash and prev_hash from entry `first` on: a rewrite done properly."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER entries_no_update")
    row = conn.execute(
        "SELECT entry_hash FROM entries WHERE id < ? ORDER BY id DESC LIMIT 1", (first,)
    ).fetchone()
    head = row[0] if row else ZERO_HASH
    for (entry_id,) in conn.execute("SELECT id FROM entries WHERE id >= ? ORDER BY id", (first,)).fetchall():
        conn.execute("UPDATE entries SET prev_hash = ? WHERE id = ?", (head, entry_id))
        values = conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM entries WHERE id = ?", (entry_id,)
        ).fetchone()
        head = entry_hash(list(values))
        conn.execute("UPDATE entries SET entry_hash = ? WHERE id = ?", (head, entry_id))
    conn.execute(TRIGGERS["entries_no_update"])
    conn.close()


# -- keys -----------------------------------------------------------------------------------------


def test_keygen_writes_a_private_key_only_its_owner_can_read_and_never_overwrites_one(tmp_path: Path, capsys):
    assert main(["ledger", "keygen", str(tmp_path / "k")]) == 0  # needs no guard.yaml
    assert (tmp_path / "k" / "checkpoint.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "k" / "checkpoint.pub").stat().st_mode & 0o777 == 0o644
    before = (tmp_path / "k" / "checkpoint.key").read_bytes()
    capsys.readouterr()
    assert main(["ledger", "keygen", str(tmp_path / "k")]) == 2
    assert "already exists" in out_of(capsys)
    assert (tmp_path / "k" / "checkpoint.key").read_bytes() == before
    (tmp_path / "file").write_text("x")
    assert main(["ledger", "keygen", str(tmp_path / "file")]) == 2


def _rsa_free_other_key(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    path.write_bytes(pem)
    path.chmod(0o600)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.chmod(0o644), "can be read by others (mode 0644)"),
        (lambda p: p.chmod(0o640), "can be read by others (mode 0640)"),
        (lambda p: p.write_text("not a key\n"), "is not an unencrypted PEM private key"),
        (lambda p: p.write_bytes(b""), "is not an unencrypted PEM private key"),
        (lambda p: p.write_bytes(p.read_bytes()[:60]), "is not an unencrypted PEM private key"),
        (lambda p: p.unlink(), "no such key file"),
        (_rsa_free_other_key, "is not an Ed25519 key"),
    ],
)
def test_a_bad_signing_key_is_one_clear_line_and_exit_2(site: Site, capsys, damage, message: str):
    site.append(1)
    damage(site.keys / "checkpoint.key")
    assert site.run("checkpoint") == 2
    out = out_of(capsys)
    assert message in out
    assert out.count("\n") == 1
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        signing_key(CheckpointsConfig(key=site.keys / "checkpoint.key", dir=site.dir))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"garbage", "is not a PEM public key"),
        (None, "is not a PEM public key"),  # the private key given as the public one
        (b"", "is not a PEM public key"),
    ],
)
def test_a_bad_public_key_is_exit_2(site: Site, capsys, content: bytes | None, message: str):
    site.append(1)
    assert site.run("checkpoint") == 0
    public = site.keys / "checkpoint.pub"
    public.write_bytes(content if content is not None else (site.keys / "checkpoint.key").read_bytes())
    capsys.readouterr()
    assert site.verify() == 2
    assert message in out_of(capsys)


def test_bad_usage_of_verify_and_checkpoint_is_exit_2(site: Site, capsys, tmp_path: Path):
    site.append(1)
    assert site.run("verify", "--checkpoints", str(site.dir)) == 2
    assert "--checkpoints DIR and --public-key PATH go together" in out_of(capsys)
    pub = str(site.keys / "checkpoint.pub")
    assert site.run("verify", "--checkpoints", str(tmp_path / "nope"), "--public-key", pub) == 2
    assert "no such checkpoints directory" in out_of(capsys)
    site.config.write_text(yaml.safe_dump({"ledger": {"path": "ledger.db"}}))
    assert site.run("checkpoint") == 2
    assert "has no ledger.checkpoints" in out_of(capsys)
    site.config.write_text(
        yaml.safe_dump({"ledger": {"checkpoints": {"key": "k", "dir": "d", "every": "0s"}}})
    )
    assert site.run("checkpoint") == 2
    assert "every" in out_of(capsys)


# -- checkpoints that check ------------------------------------------------------------------------


def test_checkpoints_verify_and_count_each_entry_once(site: Site, capsys):
    site.append(0)
    assert site.run("checkpoint") == 0  # an empty ledger: nothing to sign
    assert "empty" in out_of(capsys)
    site.append(3)
    assert site.run("checkpoint") == 0
    site.append(2)
    assert site.run("checkpoint") == 0
    first, second = (json.loads(line) for line in site.lines())
    assert (first["entry_id"], first["entries"], second["entry_id"], second["entries"]) == (6, 6, 10, 10)
    with sqlite3.connect(site.ledger) as conn:
        assert first["ledger"] == conn.execute("SELECT entry_hash FROM entries WHERE id = 1").fetchone()[0]
        assert (
            second["entry_hash"] == conn.execute("SELECT entry_hash FROM entries WHERE id = 10").fetchone()[0]
        )
    capsys.readouterr()
    assert site.verify() == 0
    assert out_of(capsys).startswith("ok: 10 entries in all")
    site.append(1)
    assert site.verify("--since-checkpoint") == 0
    assert out_of(capsys).startswith("ok: 2 entries after the checkpoint at entry 10")


def test_a_cut_off_tail_with_its_sequence_reset_and_triggers_restored_is_caught(site: Site, capsys):
    site.append(5)
    assert site.run("checkpoint") == 0
    site.sql(
        "DROP TRIGGER entries_no_delete",
        "DELETE FROM entries WHERE id > 6",
        "UPDATE sqlite_sequence SET seq = 6 WHERE name = 'entries'",
        TRIGGERS["entries_no_delete"],
    )
    capsys.readouterr()
    assert site.run("verify") == 0  # the chain alone cannot tell
    out_of(capsys)
    assert site.verify() == 1
    out = out_of(capsys)
    assert "line 1" in out
    assert "entry 10 is missing: the ledger ends at entry 6" in out
    assert site.verify("--since-checkpoint") == 1
    assert "its end was cut off" in out_of(capsys)


def test_a_rewrite_with_recomputed_hashes_is_caught(site: Site, capsys):
    site.append(4)
    assert site.run("checkpoint") == 0
    site.sql("DROP TRIGGER entries_no_update", "UPDATE entries SET agent = 'someone-else' WHERE id = 3",
             TRIGGERS["entries_no_update"])  # fmt: skip
    rehash_from(site.ledger, 3)
    capsys.readouterr()
    assert site.run("verify") == 0  # the chain alone cannot tell
    out_of(capsys)
    for extra in ((), ("--since-checkpoint",)):
        assert site.verify(*extra) == 1
        assert "entry 8 does not have the hash signed for it: the ledger was rewritten" in out_of(capsys)


def test_a_replaced_ledger_is_caught(site: Site, capsys):
    site.append(2)
    assert site.run("checkpoint") == 0
    site.ledger.unlink()
    site.append(6, agent="finance-bot")  # a new file, longer, with a valid chain of its own
    capsys.readouterr()
    assert site.run("verify") == 0
    out_of(capsys)
    assert site.verify() == 1
    assert "is not the one the checkpoints were signed for" in out_of(capsys)


def test_an_entry_deleted_from_the_middle_and_the_chain_rebuilt_is_caught_by_the_count(site: Site, capsys):
    site.append(3)
    assert site.run("checkpoint") == 0
    site.sql(
        "DROP TRIGGER entries_no_delete", "DELETE FROM entries WHERE id = 2", TRIGGERS["entries_no_delete"]
    )
    rehash_from(site.ledger, 3)
    capsys.readouterr()
    assert site.verify() == 1
    assert "line 1" in out_of(capsys)


def _forge(line: str, **changes: object) -> str:
    fields = json.loads(line) | changes
    return json.dumps(fields)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda ln: _forge(ln, entry_id=2), "bad signature: forged, or altered after it was signed"),
        (lambda ln: _forge(ln, entries=1), "bad signature"),
        (lambda ln: _forge(ln, sig="AAAA"), "bad signature"),
        (lambda ln: _forge(ln, sig="not base64!"), "bad signature"),
        (lambda ln: _forge(ln, key="0123456789abcdef"), "signed by another key"),
        (lambda ln: ln[: len(ln) // 2], "not a checkpoint (garbled, or cut short)"),
        (lambda ln: "", "not a checkpoint (garbled, or cut short)"),
        (lambda ln: "\x00\xff{}", "not a checkpoint (garbled, or cut short)"),
        (lambda ln: "[1, 2]", "not a checkpoint (its fields are not those of one)"),
        (lambda ln: _forge(ln, extra=1), "not a checkpoint (its fields are not those of one)"),
        (lambda ln: _forge(ln, entry_id="10"), "not a checkpoint (a field has the wrong type or form)"),
        (lambda ln: _forge(ln, entry_id=True), "not a checkpoint (a field has the wrong type or form)"),
        (lambda ln: _forge(ln, entry_hash="xyz"), "not a checkpoint (a field has the wrong type or form)"),
        (lambda ln: _forge(ln, v=2), "a checkpoint of an unknown version 2"),
    ],
)
def test_a_forged_or_damaged_checkpoint_line_fails_and_is_named(site: Site, capsys, change, message: str):
    site.append(2)
    assert site.run("checkpoint") == 0
    site.append(1)
    assert site.run("checkpoint") == 0
    first, second = site.lines()
    site.write_lines([first, change(second)])
    capsys.readouterr()
    for extra in ((), ("--since-checkpoint",)):
        assert site.verify(*extra) == 1
        assert f"bad: checkpoints.jsonl line 2: {message}" in out_of(capsys)


def test_a_checkpoint_signed_by_another_key_or_of_another_ledger_fails(site: Site, capsys, tmp_path: Path):
    site.append(2)
    assert site.run("checkpoint") == 0
    other = Site(tmp_path / "other")
    other.append(3)
    assert other.run("checkpoint") == 0
    site.write_lines([*site.lines(), *other.lines()])
    assert site.verify() == 1
    assert "line 2: signed by another key" in out_of(capsys)
    # The same key, another ledger: a checkpoint that belongs elsewhere.
    key = load_private_key(site.keys / "checkpoint.key")

    async def anchor_of_other():
        async with await open_ledger(LedgerConfig(path=other.ledger), readonly=True) as store:
            return await store.anchor()

    foreign = sign(anyio.run(anchor_of_other), key, "2026-01-01T00:00:00.000000Z")
    site.write_lines([site.lines()[0], foreign])
    assert site.verify() == 1
    assert "line 2: a checkpoint of another ledger" in out_of(capsys)


def test_no_checkpoint_at_all_proves_nothing(site: Site, capsys):
    site.append(1)
    assert site.verify() == 1
    assert "no valid checkpoint" in out_of(capsys)


def test_since_checkpoint_checks_only_what_came_after_the_latest_valid_one(site: Site, capsys):
    site.append(3)
    assert site.run("checkpoint") == 0
    site.append(2)
    # Entry 2 edited by hand, before the checkpoint: only a full walk reads it.
    site.sql("DROP TRIGGER entries_no_update", "UPDATE entries SET agent = 'x' WHERE id = 2",
             TRIGGERS["entries_no_update"])  # fmt: skip
    capsys.readouterr()
    assert site.verify("--since-checkpoint") == 0
    assert out_of(capsys).startswith("ok: 4 entries after the checkpoint at entry 6")
    assert site.verify() == 1
    assert "entry 2: content does not match" in out_of(capsys)
    # An entry after the checkpoint edited: since-checkpoint reads that one.
    site.sql("DROP TRIGGER entries_no_update", "UPDATE entries SET agent = 'x' WHERE id = 8",
             TRIGGERS["entries_no_update"])  # fmt: skip
    assert site.verify("--since-checkpoint") == 1
    assert "entry 8: content does not match" in out_of(capsys)


# -- a serving guard -------------------------------------------------------------------------------


async def test_a_serving_guard_signs_checkpoints_as_it_goes_and_as_it_stops(site: Site):
    site.append(2)
    points = CheckpointsConfig.model_construct(key=site.keys / "checkpoint.key", dir=site.dir, every=0.05)
    logged: list[str] = []
    async with await open_ledger(LedgerConfig(path=site.ledger)) as store, anyio.create_task_group() as tg:
        tg.start_soon(keep_checkpoints, store, signing_key(points), points, logged.append)
        with anyio.fail_after(10):
            while not (site.dir / LOG_FILE).exists():  # noqa: ASYNC110 (a file the task writes)
                await anyio.sleep(0.02)
        await anyio.sleep(0.15)  # quiet turns: nothing new, nothing written
        assert len(site.lines()) == 1
        await store.append(PolicyEvent(payload={"action": "loaded", "hash": POLICY}, policy_hash=POLICY))
        tg.cancel_scope.cancel()  # the guard stops: a last checkpoint covers the entry just made
    assert logged == []
    assert [json.loads(line)["entry_id"] for line in site.lines()] == [4, 5]


def test_check_refuses_a_bad_checkpoint_key_as_serve_would(site: Site, capsys):
    (site.root / "tool_manifests").mkdir()
    assert main(["--config", str(site.config), "check"]) == 0
    (site.keys / "checkpoint.key").chmod(0o604)
    capsys.readouterr()
    assert main(["--config", str(site.config), "check"]) == 2
    assert "can be read by others (mode 0604)" in capsys.readouterr().err


async def test_a_guard_with_a_bad_checkpoint_key_or_directory_does_not_start(site: Site, deployment):
    deployment.with_billing()
    (site.keys / "checkpoint.key").chmod(0o644)
    deployment.extra_config["ledger"] = {
        "path": "ledger.db",
        "checkpoints": {"key": str(site.keys / "checkpoint.key"), "dir": str(site.dir)},
    }
    with pytest.raises(ConfigError, match="can be read by others"):
        async with inprocess_guard(deployment, "support-bot"):
            pass
    (site.keys / "checkpoint.key").chmod(0o600)
    deployment.extra_config["ledger"]["checkpoints"]["dir"] = str(site.root / "missing")
    with pytest.raises(ConfigError, match="no such checkpoints directory"):
        async with inprocess_guard(deployment, "support-bot"):
            pass
