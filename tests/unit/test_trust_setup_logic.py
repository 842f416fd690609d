"""Issue 15 hole 8, without a broker: the trust profile, what `up` says about trust, and a
running follower's rebuild when the anchors file changes (against an in-memory governance log):
the store it ends with is the one a follower started with the new file builds."""

from __future__ import annotations

import asyncio
import collections
import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from chargemesh.infra.cli.anchors import add_anchor, remove_anchor
from chargemesh.infra.cli.errors import OpsError
from chargemesh.infra.cli.stack import trust_setup_lines
from chargemesh.infra.config import ConfigError, Settings, load_settings
from chargemesh.infra.stack.bootstrap import DEV_ROOT_ID, DevGovernance
from chargemesh.processors.governance import ChainOk, TrustAnchor
from chargemesh.processors.ingress import Admitted, Refused
from chargemesh.processors.runtime.follower import GovernanceFollower

from tests.support.world import make_world

Rec = collections.namedtuple("Rec", "offset key value")


class FakeConsumer:
    """The governance partition as a list: what the follower's consumer calls do."""

    def __init__(self, values: list[tuple[bytes, bytes]]) -> None:
        self.records = [Rec(i, k, v) for i, (k, v) in enumerate(values)]
        self.at = 0

    async def getmany(self, tp: TopicPartition, timeout_ms: int = 0,
                      max_records: int = 1) -> dict[TopicPartition, list[Rec]]:
        batch = self.records[self.at:self.at + max_records]
        self.at += len(batch)
        return {tp: batch} if batch else {}

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.at = 0

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.at = offset

    async def position(self, tp: TopicPartition) -> int:
        return self.at


def governance() -> tuple[list[tuple[bytes, bytes]], list[TrustAnchor]]:
    world = make_world()
    world.credential("ts-station", ["STATION"])
    return ([(e.body.subject_key.encode(), e.encode()) for e in world.governance],
            world.anchors())


def follower_on(values: list[tuple[bytes, bytes]], anchors: list[TrustAnchor],
                path: Path | None) -> GovernanceFollower:
    follower = GovernanceFollower({"bootstrap.servers": "unused:1"}, anchors, anchors_path=path)
    follower._consumer_or_none = FakeConsumer(values)  # type: ignore[assignment]
    return follower


def write(path: Path, anchors: list[TrustAnchor]) -> None:
    tmp = path.with_name("tmp.json")
    tmp.write_text(json.dumps([{"authority_id": a.authority_id,
                                "public_key_hex": a.public_key.hex()} for a in anchors]))
    tmp.replace(path)


def summary(follower: GovernanceFollower) -> dict[str, Any]:
    store = follower.store
    return {"principals": sorted(store.principals),
            "station": type(store.resolve("ts-station", 1)).__name__,
            "verdicts": {o: type(v).__name__ for o, v in follower.verdicts.items()}}


def test_a_changed_anchors_file_rebuilds_the_store_a_fresh_worker_would_hold(
        tmp_path: Path) -> None:
    values, anchors = governance()
    path = tmp_path / "trust_anchors.json"
    write(path, anchors)
    running = follower_on(values, anchors, path)

    async def scenario() -> None:
        assert await running.poll_once() == len(values)
        assert isinstance(running.store.resolve("ts-station", 1), ChainOk)
        running.verdict_at(0)  # the agent took offset 0's verdict; the rest are pending
        write(path, [])  # `anchors remove` of the only root, while the worker runs
        assert await running.poll_once() == 0
        fresh = follower_on(values, [], None)
        await fresh.poll_once()
        assert summary(running)["station"] == summary(fresh)["station"] == "Rejection"
        assert summary(running)["principals"] == summary(fresh)["principals"]
        assert 0 not in running.verdicts  # a taken verdict is not handed out again
        assert all(isinstance(running.verdicts[o], Refused) for o in running.verdicts)
        assert sorted(running.verdicts) == list(range(1, len(values)))
        assert running.next_offset == len(values)
        write(path, anchors)  # `anchors add` puts it back: trusted again, nothing re-read twice
        assert await running.poll_once() == 0
        assert isinstance(running.store.resolve("ts-station", 1), ChainOk)
        assert isinstance(running.verdicts[1], Admitted)

    asyncio.run(scenario())


def test_an_unreadable_anchors_file_keeps_the_anchors_in_force(tmp_path: Path) -> None:
    values, anchors = governance()
    path = tmp_path / "trust_anchors.json"
    write(path, anchors)
    running = follower_on(values, anchors, path)

    async def scenario() -> None:
        await running.poll_once()
        path.write_text("[{\"authority_id\": ")  # half a file
        await running.poll_once()
        assert isinstance(running.store.resolve("ts-station", 1), ChainOk)
        path.unlink()
        await running.poll_once()
        assert isinstance(running.store.resolve("ts-station", 1), ChainOk)

    asyncio.run(scenario())


def test_the_profile_is_dev_for_the_embedded_stack_and_production_otherwise() -> None:
    assert Settings().trust_profile == "dev"
    assert Settings(kafka_bootstrap="kafka:9092").trust_profile == "production"
    assert Settings(profile="production").trust_profile == "production"
    assert load_settings({"CHARGEMESH_PROFILE": "production"}).trust_profile == "production"
    with pytest.raises(ConfigError, match="CHARGEMESH_PROFILE"):
        _ = Settings(profile="staging").trust_profile


def test_up_never_sets_up_trust_silently(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, profile="production")
    [warning] = trust_setup_lines(settings, None)
    assert warning.startswith("trust: WARNING: production profile, no trust anchors")
    assert "chargemesh anchors add --authority-id ID --public-key-hex HEX" in warning
    add_anchor(settings.trust_anchors_path, DEV_ROOT_ID, b"\x01" * 32, replace=False)
    add_anchor(settings.trust_anchors_path, "authority:grid-eu", b"\x02" * 32, replace=False)
    listed, dev_left = trust_setup_lines(settings, None)
    assert "2 trust anchor(s)" in listed and "authority:grid-eu" in listed
    assert f"anchors remove --authority-id {DEV_ROOT_ID}" in dev_left
    dev = DevGovernance(tmp_path / "dev-governance" / "root.key.json",
                        tmp_path / "dev-governance" / "issuer.key.json", created=True)
    said = trust_setup_lines(Settings(state_dir=tmp_path), dev)[0]
    assert said.startswith(f"trust: DEV PROFILE: development root anchor {DEV_ROOT_ID} created")
    assert str(dev.root_key_file) in said and "for development only" in said


def test_remove_anchor_removes_exactly_one_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    path = tmp_path / "trust_anchors.json"
    add_anchor(path, "root-a", b"\x01" * 32, replace=False)
    add_anchor(path, "root-b", b"\x02" * 32, replace=False)
    remove_anchor(path, "root-a")
    assert [a.authority_id for a in TrustAnchor.load_file(path)] == ["root-b"]
    with pytest.raises(OpsError, match=r"root-a is not a trust anchor .*\(listed: root-b\)"):
        remove_anchor(path, "root-a")
