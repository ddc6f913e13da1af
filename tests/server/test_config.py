"""server/config.py, server/options.py, stages/registry.py and the CLI: bad config names its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.config import load_config, parse_config
from stages.registry import build_pipeline, describe_chain
from tests.client import TEST_PIPELINE
from vocab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        config = parse_config(data)
        build_pipeline(config.pipeline)
    return info.value.message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"pipeline": TEST_PIPELINE, "server": {"prot": 1}}, "server.prot: unknown key"),
        ({"pipeline": TEST_PIPELINE, "server": {"port": "80"}}, "server.port: expected an integer"),
        ({"pipeline": TEST_PIPELINE, "server": {"port": 70000}}, "server.port: must be 0..65535"),
        ({"pipeline": TEST_PIPELINE, "session": {"lead_ms": -1}}, "session.lead_ms: must be >= 0"),
        ({"pipeline": TEST_PIPELINE, "sesion": {}}, "sesion: unknown section"),
        ({"pipeline": []}, "pipeline: must be a non-empty list"),
        ({"pipeline": [{"engine": "nope"}]}, "pipeline[0].engine: unknown engine 'nope'"),
        ({"pipeline": [{"name": "x"}]}, "pipeline[0].engine: required"),
        (
            {"pipeline": [{"engine": "echo", "delay": 5}]},
            "pipeline[0].delay: unknown option for engine 'echo'",
        ),
        (
            {"pipeline": [{"engine": "tone", "chunk_ms": 7}]},
            "pipeline[0].chunk_ms: must be 10/20/30/40/60/80/100",
        ),
        ({"pipeline": [{"engine": "tone", "amplitude": 2.0}]}, "pipeline[0].amplitude: must be in (0, 1]"),
        ({"pipeline": [{"engine": "echo", "name": "a b"}]}, "pipeline[0].name: must be an identifier"),
        (
            {"pipeline": [{"engine": "echo"}, {"engine": "echo"}]},
            "pipeline[1].name: duplicate stage name 'llm'",
        ),
        (
            {"pipeline": [{"engine": "energy"}, {"engine": "echo"}]},
            "stage 'vad' (energy) outputs 'speech' but the next stage 'llm' (echo) takes 'text'",
        ),
    ],
)
def test_bad_config_names_the_key(data: dict[str, Any], expected: str) -> None:
    assert expected in error_of(data)


def test_chain_is_described_with_types() -> None:
    specs = build_pipeline(TEST_PIPELINE)
    assert describe_chain(specs) == (
        "audio -> [vad:energy] -> speech -> [asr:duration_asr] -> text -> [llm:echo] -> text -> [tts:tone] -> audio"
    )


def test_cli_check_config(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"pipeline": TEST_PIPELINE}))
    out = subprocess.run(
        [sys.executable, "-m", "server", "check-config", str(good)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert out.returncode == 0
    assert "[llm:echo]" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"pipeline": TEST_PIPELINE, "session": {"barge_in_ms": 1}}))
    out = subprocess.run(
        [sys.executable, "-m", "server", "check-config", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert out.returncode == 2
    assert "session.barge_in_ms: unknown key" in out.stderr


def test_load_config_reports_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("pipeline: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
