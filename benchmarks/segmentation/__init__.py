"""Table 4: supervised semantic segmentation through mmsegmentation (ADE20k, VOC2012; linear and multiscale).

The mmseg stack is imported lazily (``mmseg_env.ensure_mmseg``) so that task discovery stays cheap and works
without it; the tasks then report the missing dependency in the run's preflight.
"""
