"""Work functions the pipeline's fault tests inject into Ray actors ('pipeline_faults:NAME'; tests/ is on the
actors' PYTHONPATH, see pipeline_support).

No side effects on import: the actors import this module.
"""

from __future__ import annotations

import os
from pathlib import Path

from c123.progress import Step

# ---- work functions injected into actors (as "pipeline_faults:NAME") ------------
KILL_MARKER = "KILL_ACTOR"
"""A file of this name in a case's output folder makes `die_once_mid_case` kill its actor once."""


def die_once_mid_case(job, priors, progress):
    """The real reconstruction, but the actor process dies (os._exit) in the NeRF stage after the first
    checkpoint when the case folder holds KILL_ACTOR (removed first, so the retry completes)."""
    from c123_pipeline.tasks.actors import reconstruct_case

    marker = Path(job.out_dir) / KILL_MARKER

    def hook(info):
        progress(info)
        if isinstance(info, Step) and info.label == "nerf" and info.step >= 6 and marker.exists():
            marker.unlink()
            os._exit(1)

    return reconstruct_case(job, priors, hook)


def always_die(job, priors, progress):
    """An actor that dies on every case."""
    os._exit(3)


def refuse_input(job, priors, progress):
    """A case whose input is refused (a C123Error), on every case."""
    from c123.errors import InputError

    raise InputError(f"{job.case_id}: refused by the test's work function")


def weights_damaged(job, priors, progress):
    """Every case meets damaged model weights (as loading the priors reports them); leaves a mark that it ran."""
    from c123.errors import WeightsMissingError

    Path(job.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(job.out_dir) / "tried").touch()
    raise WeightsMissingError("zero123: the model files in /models/zero123/unet cannot be loaded (SafetensorError: "
                              "invalid header length), so they are damaged or incomplete; copy them again")


def raise_runtime_error(job, priors, progress):
    """An unexpected (retryable) exception on every case."""
    raise RuntimeError("boom in the work function")


class ProbeCase:
    """A job's case without a dataset (the actors unpickle it, so it lives in an importable module)."""

    def __init__(self, case_id: str):
        self.id = case_id


def threads_seen(job, priors, progress):
    """Report the torch thread count a case runs with; the case 'long' keeps stepping (calling `progress`, as
    a reconstruction does every iteration) until it is given more than one thread, or 300 s pass (the thread
    comes when 'short' has finished on the other actor, whose start on a busy machine took over a minute: the
    old 60 s made the test fail for no change)."""
    import time

    import torch

    if job.case_id == "long":
        deadline = time.time() + 300
        while torch.get_num_threads() == 1 and time.time() < deadline:
            progress(Step("nerf", 0, 1, 1.0, 0.0, None, None, None, None))
            time.sleep(0.05)
    return {"threads": torch.get_num_threads()}


def priors_held(job, priors, progress):
    """Report how many prior sets the actor held when the case started (loaded ahead by `ActorPool`'s warm-up)."""
    return {"priors_held": len(priors), "pid": os.getpid()}


def gpu_ids_seen(job, priors, progress):
    """Report the GPU ids Ray gave the actor (and its pid), holding the actor a moment so that every actor of
    the pool gets a case."""
    import os
    import time

    import ray

    time.sleep(2.0)
    return {"gpus": [str(g) for g in ray.get_gpu_ids()], "pid": os.getpid()}
