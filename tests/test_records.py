"""parallel.Records, the reproduction's JSON-lines records, without torchrun: a kill at any byte
of a write loses only the record being written; merging takes the first record of each key
across the ranks' files, in the dataset's order, and a merge stopped before its rename leaves
every file as it was."""

import json
import os

import pytest

import parallel


def record(key, value=None):
    return {"key": key, "value": key if value is None else value}


def write(records, path):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_kill_at_any_byte_of_a_write_loses_only_that_record(tmp_path):
    done = [record("0"), record("1")]
    line = (json.dumps(record("2")) + "\n").encode()
    for cut in range(len(line)):  # the process dies after `cut` bytes of the third record
        folder = tmp_path / str(cut)
        folder.mkdir()
        runs = parallel.Records(folder, "run", 0)
        write(done, runs.own)
        with open(runs.own, "ab") as f:
            f.write(line[:cut])
        assert runs.read() == done  # the cut record is not there, nothing else is lost
        with runs.append() as f:  # the next run cuts the partial line off and writes the record whole
            f.write(line.decode())
        assert runs.read() == done + [record("2")]
        assert runs.own.read_bytes().count(b"\n") == 3


def test_merge_keeps_the_first_record_of_each_key_in_the_dataset_s_order(tmp_path):
    rank0, rank1, rank2 = (parallel.Records(tmp_path, "run", r) for r in range(3))
    write([record("b"), record("d", "rank 0")], rank0.own)
    write([record("a"), record("d", "rank 1"), record("z")], rank1.own)  # d again: run twice, after a resume
    write([record("c"), record("y")], rank2.own)
    merged = rank0.merge(["c", "a", "d", "b"])
    assert [r["key"] for r in merged] == ["c", "a", "d", "b", "y", "z"]  # the dataset's order, then keys not in it, sorted
    assert [r for r in merged if r["key"] == "d"] == [record("d", "rank 0")]  # the first file's record wins
    assert parallel.read_lines(rank0.own) == merged
    assert not rank1.own.exists() and not rank2.own.exists() and rank0.files() == [rank0.own]


def test_a_merge_stopped_before_its_rename_changes_nothing(tmp_path, monkeypatch):
    rank0, rank1 = parallel.Records(tmp_path, "run", 0), parallel.Records(tmp_path, "run", 1)
    write([record("b")], rank0.own)
    write([record("a")], rank1.own)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        rank0.merge(["a", "b"])
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.endswith(".merging")} == before
    assert [r["key"] for r in rank0.merge(["a", "b"])] == ["a", "b"]  # and the next merge completes it


def test_the_records_folder_is_made_and_a_cut_is_reported(tmp_path, capsys):
    runs = parallel.Records(tmp_path / "new" / "folder", "run", 0)
    with runs.append() as f:  # the folder and its parents are made
        f.write(json.dumps(record("0")) + "\n" + '{"key": "1", "va')
    with runs.append():
        pass
    assert capsys.readouterr().out == (
        f"{runs.own}: dropped a truncated last line (16 bytes, an item interrupted while it was written); it will be run again\n"
    )
    assert runs.read() == [record("0")]


def test_blank_lines_are_skipped_and_a_damaged_line_is_named(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps(record("0")) + "\n\n" + json.dumps(record("1")) + "\n")
    assert parallel.read_lines(path) == [record("0"), record("1")]  # the records after a blank line too
    path.write_text(json.dumps(record("0")) + "\n{oops\n" + json.dumps(record("1")) + "\n")
    with pytest.raises(SystemExit, match=rf"^{path}, line 2, is not a JSON record \(.*\); move the file away to run those items again$"):
        parallel.read_lines(path)
