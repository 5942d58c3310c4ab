"""Back up a running replica with an LMDB copy, restore it, and its identity then (README "Operating a cluster").

The copy runs in another process, as ``kubectl exec`` would run it (LMDB
allows one open of an environment per process, and any number of processes).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crdtstore.docstore import DocumentNotFound
from crdtstore.node import Node, NodeConfig

INC = [{"op": "increment", "path": ["n"]}]

# The command the README gives, with the paths as arguments.
BACKUP = (
    "import lmdb, sys; "
    "env = lmdb.open(sys.argv[1], readonly=True, lock=True, max_dbs=16); "
    "env.copy(sys.argv[2], compact=True); env.close()"
)


def backup(source: Path, target: Path) -> None:
    target.mkdir()
    subprocess.run([sys.executable, "-c", BACKUP, str(source), str(target)], check=True, timeout=60)


def test_a_restored_copy_keeps_its_base_id_and_starts_an_incarnation_never_used(tmp_path: Path) -> None:
    async def scenario() -> None:
        live = tmp_path / "live"
        node = Node(NodeConfig(region="us", data_dir=live, sync=True))
        await node.start()
        await node.apply("before", INC)
        identity = node.storage.identity
        base, epoch, running_id = identity.base, identity.epoch, node.replica_id
        backup(live, tmp_path / "backup")  # while the node runs
        await node.apply("after", INC)
        await node.close()

        restored_dir = tmp_path / "restored"
        shutil.copytree(tmp_path / "backup", restored_dir)
        restored = Node(NodeConfig(region="us", data_dir=restored_dir, sync=True))
        await restored.start()
        try:
            again = restored.storage.identity
            assert again.base == base  # the same replica to its peers: acks, quorum membership
            assert again.epoch == epoch + 1  # the epoch the lost timeline's next start would have taken...
            assert restored.replica_id != running_id  # ...but a fresh nonce: it never mints a dot already used
            assert (await restored.read("before")).value == {"n": 1}
            # What it took after the backup is gone here until its peers bring it back (deltas, anti-entropy).
            with pytest.raises(DocumentNotFound):
                await restored.read("after")
        finally:
            await restored.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
