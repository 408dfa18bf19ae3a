"""A local web explorer of a trained DiffAE: sample, encode & reconstruct, interpolate, manipulate,
inpaint, mosaic.

    python run.py task=explore ckpt_path=logs/train/lat/checkpoints/last.ckpt \\
        latents_path=logs/infer_latents/demo/latents.pt [port=7860] [host=127.0.0.1]

``service`` holds the actions (no UI; ``canvas`` its whole-image inputs and mask presets), ``jobs`` runs them one
at a time with progress and cancellation, ``app`` is the gradio page over them (``ui``: its shared pieces;
gradio is an optional extra: ``pip install 'rockgen[explore]'``).
"""
