"""The curation work folder on a real S3-compatible server: a task's files reach the store together
when it publishes, never when it fails; its own files read back locally; a listing sees them."""

from __future__ import annotations

import fsspec

from factory.curate import workfolder as wf
from factory.curate.workfolder import WorkFolder


def on_store(url: str) -> list[str]:
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return sorted(p[len(root) + 1:] for p in fs.find(root))


def test_a_task_publishes_its_files_together(s3_bucket):
    url = f"{s3_bucket}/work/sigs"
    folder = WorkFolder(url)
    wf.discard()
    with folder.open("bucket_000/00000.minhash.sig", "wb") as f:
        f.write(b"unsorted")
    with folder.open("bucket_000/00000.minhash.sig", "rb") as f:  # read back locally, then rewritten
        assert f.read() == b"unsorted" and f.size == 8
    with folder.open("bucket_000/00000.minhash.sig", "wb") as f:
        f.write(b"sorted")
    with folder.open("index/00000.jsonl.gz", "wt", compression="gzip") as f:
        f.write('{"id": "a"}\n')
    assert on_store(url) == [] and folder.exists("bucket_000/00000.minhash.sig")
    assert wf.publish() == 2
    assert on_store(url) == ["bucket_000/00000.minhash.sig", "index/00000.jsonl.gz"]
    again = WorkFolder(url)  # another task, another process: reads from the store
    assert again.open("bucket_000/00000.minhash.sig", "rb").read() == b"sorted"
    with again.open("index/00000.jsonl.gz", "rt", compression="gzip") as f:
        assert f.read() == '{"id": "a"}\n'
    assert again.exists("index/00000.jsonl.gz") and not again.exists("index/00001.jsonl.gz")


def test_a_failed_task_uploads_nothing(s3_bucket):
    url = f"{s3_bucket}/work/filtered"
    folder = WorkFolder(url)
    with folder.open("00000.jsonl.gz", "wb") as f:
        f.write(b"half a task")
    wf.discard()  # the executor's next task starts here
    assert wf.publish() == 0 and on_store(url) == [] and not folder.exists("00000.jsonl.gz")


def test_a_listing_sees_the_tasks_own_files(s3_bucket):
    """A step that lists what an earlier step of its task wrote (MinHash clusters read the verified pairs)."""
    url = f"{s3_bucket}/work/dups"
    folder = WorkFolder(url)
    wf.discard()
    for i in range(3):
        with folder.open(f"{i:05d}.dups", "wb") as f:
            f.write(bytes([i]) * 16)
    assert folder.list_files(glob_pattern="*.dups") == [f"{i:05d}.dups" for i in range(3)]
    assert on_store(url) == [f"{i:05d}.dups" for i in range(3)]
    assert [f.read() for f in folder.open_files([f"{i:05d}.dups" for i in range(3)])] == [bytes([i]) * 16 for i in range(3)]
    wf.discard()


def test_logs_go_up_when_closed_and_stats_with_the_completion_marker(s3_bucket):
    url = f"{s3_bucket}/work/logs/filter"
    logs = WorkFolder(url, defer=False)
    wf.discard()
    with logs.open("logs/task_00000.log", "w") as f:
        f.write("done\n")
    with logs.open("stats/00000.json", "w") as f:
        f.write("[]")
    assert on_store(url) == ["logs/task_00000.log"]
    logs.open("completions/00000", "w").close()
    assert on_store(url) == ["completions/00000", "logs/task_00000.log", "stats/00000.json"]
    assert logs.isfile("completions/00000") and not logs.isfile("completions/00001")
