"""Training methods, one object each (networks, loss, optimiser groups, EMA policy, generation protocol).

``rockgen.lit.module.MethodModule`` drives any of them; ``LitModel``, ``PixelDiffusion`` and ``LitVAE`` are that
module with the method fixed (the names presets and checkpoints record).
"""
