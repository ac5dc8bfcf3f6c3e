"""The checkpoint engine: universal sharded format, asynchronous multi-tier save, reshard-on-restore.

```python
from elastra.checkpoint import Checkpointer
ckpt = Checkpointer("s3://bucket/prefix", local_dir="/nvme/ckpt", keep=3)
handle = ckpt.save(step, state)   # returns once staged; handle.wait() blocks until committed
step = ckpt.load(state)           # newest valid checkpoint, resharded in place to how `state` is sharded now

merge("s3://b/merged", ["s3://b/run-a", "s3://b/run-b/step-900"], weights=[0.6, 0.4])  # streaming
front = merge_search(["s3://b/run-a", "s3://b/run-b"], evaluate, objectives=["loss_a", "loss_b"]).front
```
The format is described in docs/format.md.
"""

from __future__ import annotations

from elastra.checkpoint.checkpointer import Checkpointer, latest
from elastra.checkpoint.coverage import init_optimizer_state
from elastra.checkpoint.format import FORMAT_VERSION, FormatError
from elastra.checkpoint.handles import CheckpointError, CheckpointStats, CommitInfo, SaveHandle
from elastra.checkpoint.merge_plan import MergeError, MergeMethod
from elastra.checkpoint.merging import MergeResult, merge
from elastra.checkpoint.pretrained import load_pretrained
from elastra.checkpoint.report import RestoreReport
from elastra.checkpoint.search import Candidate, SearchResult, merge_search
from elastra.checkpoint.state import Flat

__all__ = [
    "FORMAT_VERSION",
    "Candidate",
    "CheckpointError",
    "CheckpointStats",
    "Checkpointer",
    "CommitInfo",
    "Flat",
    "FormatError",
    "MergeError",
    "MergeMethod",
    "MergeResult",
    "RestoreReport",
    "SaveHandle",
    "SearchResult",
    "init_optimizer_state",
    "latest",
    "load_pretrained",
    "merge",
    "merge_search",
]
