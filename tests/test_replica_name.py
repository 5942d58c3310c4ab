"""A replica's name (a pod's ordinal) in its id: ``<region>-<name>-<random>``, only when its directory is new."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from crdtstore.config import ConfigError, resolve
from crdtstore.storage import Storage


def _ids() -> object:
    counter = itertools.count(1)
    return lambda: f"r{next(counter)}"


def test_a_new_directory_gets_region_name_and_random_in_its_id(tmp_path: Path) -> None:
    storage = Storage.open(tmp_path / "a", region="us", name="2", random_id=_ids(), sync=False)  # type: ignore[arg-type]
    try:
        assert storage.identity.base == "us-2-r1"
        assert storage.replica_id == "us-2-r1.1.r2"
    finally:
        storage.close()


def test_an_existing_directory_keeps_its_id_whatever_the_name(tmp_path: Path) -> None:
    # A restored or re-mounted volume keeps the id it was created with: the name is not identity.
    first = Storage.open(tmp_path / "a", region="us", name="0", random_id=_ids(), sync=False)  # type: ignore[arg-type]
    base = first.identity.base
    first.close()
    again = Storage.open(tmp_path / "a", region="us", name="7", random_id=_ids(), sync=False)  # type: ignore[arg-type]
    try:
        assert again.identity.base == base == "us-0-r1" and again.identity.epoch == 2
    finally:
        again.close()


def test_the_same_name_on_a_new_directory_never_reuses_an_id(tmp_path: Path) -> None:
    random = _ids()
    bases = []
    for directory in ("a", "b"):
        storage = Storage.open(tmp_path / directory, region="us", name="0", random_id=random, sync=False)  # type: ignore[arg-type]
        bases.append(storage.identity.base)
        storage.close()
    assert bases[0] != bases[1]


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "x" * 65])
def test_a_bad_name_is_refused_before_anything_is_created(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        Storage.open(tmp_path / "a", region="us", name=bad, random_id=_ids())  # type: ignore[arg-type]
    assert not (tmp_path / "a").exists()


def test_the_replica_name_setting() -> None:
    assert resolve({}, env={"CRDTSTORE_REPLICA_NAME": "2"}).replica_name == "2"
    assert resolve({}, env={}).replica_name is None
    for bad in ("a.b", "x" * 33, "a/b"):
        with pytest.raises(ConfigError, match="replica name"):
            resolve({"replica_name": bad}, env={})
