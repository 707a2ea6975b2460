"""The zero-setup broker: a message file only ever appears complete (kombu's own transport creates it empty first)."""

import os

from kombu import Connection

from tradeops import kombu_filesystem


def test_a_message_file_appears_only_once_complete(tmp_path, monkeypatch):
    folders = {name: str(tmp_path / name) for name in ("queue", "processed", "control")}
    for folder in folders.values():
        os.makedirs(folder)
    visible_before_rename = []
    real_replace = os.replace

    def spy(src, dst):  # what a consumer listing the queue folder could see while the file is being written
        visible_before_rename.append([n for n in os.listdir(folders["queue"]) if n.endswith(".msg")])
        real_replace(src, dst)

    monkeypatch.setattr(kombu_filesystem.os, "replace", spy)
    options = {
        "data_folder_in": folders["queue"],
        "data_folder_out": folders["queue"],
        "processed_folder": folders["processed"],
        "control_folder": folders["control"],
    }
    with Connection(
        "filesystem://", transport="tradeops.kombu_filesystem:Transport", transport_options=options
    ) as connection:
        queue = connection.SimpleQueue("q")
        queue.put({"trade_id": 1})
        assert queue.get(timeout=2).payload == {"trade_id": 1}
        queue.close()

    assert visible_before_rename and all(seen == [] for seen in visible_before_rename)
