"""`make run`'s scenario against real processes: the five services and the demo service
on the test servers, every onboarding branch, then a second run that reuses the setup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cadenza_common.settings import KafkaSettings
from cadenza_devstack.demo import RunOptions, run_demo
from cadenza_devstack.stack import StackInfo
from cadenza_devstack.supervisor import isolated_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


async def test_every_onboarding_branch_ends_as_expected_and_a_second_run_reuses_the_setup(
    kafka_settings: KafkaSettings, database_url: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    info = StackInfo(kafka_settings.bootstrap_servers, database_url)
    options = RunOptions(once=True, extra_env=isolated_env(kafka_settings.topic_prefix))

    first = await run_demo(info, tmp_path, options)
    first_out = capsys.readouterr().out
    keys = json.loads((tmp_path / "demo.json").read_text())
    second = await run_demo(info, tmp_path, options)
    second_out = capsys.readouterr().out

    assert first == 0, first_out[-5000:]
    assert "6 of 6 branches ended as expected" in first_out
    assert "compensated" in first_out
    assert second == 0, second_out[-5000:]
    assert "reusing the demo org and keys" in second_out
    assert json.loads((tmp_path / "demo.json").read_text())["admin_key"] == keys["admin_key"]
