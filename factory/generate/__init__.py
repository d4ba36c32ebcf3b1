"""The generate stage: seeds x recipes x samples through the teacher, on Ray, resumable.

config (GenerateConfig) -> inputs (seeds read and sharded) -> driver (run: probe, hand shards to
workers or batch mode, write the manifest) -> workers (Ray actors) -> shard (one shard's items
against the teacher, written atomically). `factory.teacher` is the endpoint library it calls.
"""

from factory.generate.config import GenerateConfig, teacher_config
from factory.generate.driver import probe, run
from factory.generate.inputs import load_seeds, split

__all__ = ["GenerateConfig", "load_seeds", "probe", "run", "split", "teacher_config"]
