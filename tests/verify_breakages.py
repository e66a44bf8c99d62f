"""Deliberate breakages the verify nightly must flag, as work functions injected into Ray actors
('verify_breakages:NAME'; tests/ is on the actors' PYTHONPATH, see pipeline_support). The third breakage, a
halved learning rate, is a config override (train.lr) and needs no code here.

No side effects on import: the actors import this module.
"""

from __future__ import annotations


def mirrored_camera_convention(job, priors, progress):
    """The real reconstruction with Zero-1-to-3's delta azimuth mirrored (the camera convention broken)."""
    from c123.priors import zero123
    from c123_pipeline.tasks.actors import reconstruct_case

    zero123.AZIMUTH_SIGN = -1.0
    try:
        return reconstruct_case(job, priors, progress)
    finally:
        zero123.AZIMUTH_SIGN = 1.0


def untrained_dmtet_stage(job, priors, progress):
    """The real reconstruction whose DMTet stage never trains: the mesh is the one initialised from the NeRF."""
    import c123.reconstruct as reconstruct_module
    from c123_pipeline.tasks.actors import reconstruct_case

    real = reconstruct_module.run_stage
    reconstruct_module.run_stage = lambda stage, loop: None if stage.name == "dmtet" else real(stage, loop)
    try:
        return reconstruct_case(job, priors, progress)
    finally:
        reconstruct_module.run_stage = real
