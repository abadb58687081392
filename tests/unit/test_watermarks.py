"""The local watermark state file (statsfeeder/watermarks.py): no peer involved."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from statsfeeder.errors import ConfigError
from statsfeeder.watermarks import WatermarkFile


def test_marks_survive_a_new_process_and_only_ever_move_forward(tmp_path: Path) -> None:
    path = tmp_path / "state" / "watermarks.json"
    first = WatermarkFile(path)
    first.open()  # creates the folder; no file yet
    first.update("vc1", "kairosdb", {"vm-1": 1000, "vm-2": 980})
    first.update("vc1", "kairosdb", {"vm-1": 960})  # older: ignored
    first.update("vc1", "cassandra", {"vm-1": 1020})
    first.flush()
    assert sorted(os.listdir(path.parent)) == ["watermarks.json"]  # no temporary left
    again = WatermarkFile(path)
    again.open()
    assert again.load("vc1") == {"kairosdb": {"vm-1": 1000, "vm-2": 980},
                                 "cassandra": {"vm-1": 1020}}
    assert again.load("vc2") == {}
    stamp = path.stat().st_mtime_ns
    again.flush()  # nothing changed: not rewritten
    assert path.stat().st_mtime_ns == stamp


def test_a_file_that_is_not_ours_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "watermarks.json"
    for text in ("{not json", json.dumps({"version": 7, "vcenters": {}}), "[]"):
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            WatermarkFile(path).open()
        message = str(caught.value)
        assert message.startswith(f"config: state.watermarks_file: {path}: not a statsfeeder")
        assert "\n" not in message


def test_a_folder_that_cannot_be_made_is_refused(tmp_path: Path) -> None:
    (tmp_path / "volume").write_text("a file where the folder should be")
    with pytest.raises(ConfigError) as caught:
        WatermarkFile(tmp_path / "volume" / "watermarks.json").open()
    assert str(caught.value) == (f"config: state.watermarks_file: {tmp_path}/volume/"
                                 "watermarks.json: cannot create its folder: File exists")
