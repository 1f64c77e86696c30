"""Data-file errors name the path, the line and the fix."""
import pytest

from harness.data.files import read_records, require_fields
from harness.errors import HarnessError


def test_reads_json_arrays_and_json_lines(tmp_path):
    arr = tmp_path / "a.json"
    arr.write_text('[{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]')
    jl = tmp_path / "b.json"
    jl.write_text('{"question": "q1", "answer": "a1"}\n\n{"question": "q2", "answer": "a2"}\n')
    assert read_records(arr) == read_records(jl) == [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]


def test_malformed_json_lines_names_path_and_line(tmp_path):
    path = tmp_path / "forget01.json"
    path.write_text('{"question": "q1", "answer": "a1"}\n{"question": "q2", "answer": \n')
    with pytest.raises(HarnessError) as err:
        read_records(path)
    assert str(err.value).startswith(f"malformed JSON Lines in {path} at line 2: ")


def test_malformed_json_array_names_line_and_column(tmp_path):
    path = tmp_path / "verbmem.json"
    path.write_text('[\n {"prompt": "p", "gt": "g"},\n {"prompt": "p" "gt": "g"}\n]')
    with pytest.raises(HarnessError, match=f"malformed JSON in {path} at line 3, column"):
        read_records(path)


def test_missing_file_and_missing_field(tmp_path):
    with pytest.raises(HarnessError, match="does not exist; check --data-dir"):
        read_records(tmp_path / "absent.json")
    path = tmp_path / "qa.json"
    with pytest.raises(HarnessError) as err:
        require_fields([{"question": "q", "answer": "a"}, {"question": "q"}], ["question", "answer"], path)
    assert str(err.value) == f"{path}, record 2: missing field(s) answer; every record of this split needs question, answer."
