"""The explorer's web page (gradio Blocks): one tab per action of :class:`~rockgen.explore.service.ExploreService`.

Every model action is queued in one gradio concurrency group of size 1 (``concurrency_id="model"``) and runs in
a worker thread, so the page stays responsive; the service's JobRunner is the second guard (one job at a time
even outside gradio) and makes jobs cancellable: the Cancel buttons run in their own group, never behind a job.
Each action's HTTP API name is its tab's verb (``/sample``, ``/reconstruct``, ``/interpolate``, ``/manipulate``,
``/inpaint``, ``/mosaic``, ``/cancel``, ``/jobs``), usable from ``gradio_client``. Results are also written as PNG
(tiles upscaled to ``display_size`` with Lanczos; inpainted images and mosaics at native resolution) into the
run directory and offered for download.

gradio's bundled frontend brings its own JS, CSS and fonts (``/assets``, ``/static/fonts``): the page fetches
nothing from a CDN (checked by the Chromium test, which records every request the page makes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rockgen.explore.canvas import MASK_PRESETS
from rockgen.explore.service import ExploreService
from rockgen.explore.ui import (
    CONTROL,
    Outputs,
    action_buttons,
    as_ui_error,
    gr,
    picker,
    progress_fn,
    result_area,
    wire_action,
)
from rockgen.inpaint import comparison_image
from rockgen.visual import to_uint8


def build_app(
    service: ExploreService,
    run_dir: Path,
    *,
    title: str = "rockgen explorer",
    header: str = "",
    tiles: list[str] | None = None,
    T: int = 20,
    T_latent: int = 20,
    display_size: int = 128,
) -> gr.Blocks:
    """The Blocks app over ``service``; results go to ``run_dir``. ``tiles``: files offered in the pickers."""
    out = Outputs(run_dir, display_size)
    feat = service.features
    tiles = tiles or []
    max_n = service.max_images

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"# {title}\n{header}")
        with gr.Tab("Sample"):
            if not feat.can_sample:
                gr.Markdown(f"**{feat.sample_message}**", elem_id="sample-disabled")
            with gr.Row():
                n = gr.Slider(1, max_n, value=min(8, max_n), step=1, label="tiles")
                seed = gr.Number(0, precision=0, label="seed")
                steps = gr.Slider(1, 200, value=T, step=1, label="decoder steps (T)")
                lsteps = gr.Slider(1, 200, value=T_latent, step=1, label="latent steps (T_latent)")
            with gr.Row():
                sampler = gr.Dropdown(feat.samplers, value=feat.samplers[0], label="sampler")
                cls = gr.Dropdown(
                    [""] + (feat.classes or []),
                    value="",
                    label="class (empty: unconditional)",
                    visible=bool(feat.classes),
                )
                guidance = gr.Slider(0, 10, value=1, step=0.1, label="guidance w", visible=feat.guidance)
            go, stop = action_buttons("Sample", "sample-button", interactive=feat.can_sample, stop_id="sample-cancel")
            gallery = gr.Gallery(label="samples", columns=8, format="png", object_fit="contain")
            info, png = result_area("PNG grid")

            @as_ui_error
            def sample(n, seed, steps, lsteps, sampler, cls, guidance, progress=gr.Progress()):  # noqa: B008
                """N new tiles from a seed: latent DDIM → decoder."""
                images, text = service.sample(
                    int(n), int(seed), int(steps), int(lsteps), sampler, cls or None, guidance, progress_fn(progress)
                )
                return out.tiles(images), text, out.save("sample", images)

            ins, outs = [n, seed, steps, lsteps, sampler, cls, guidance], [gallery, info, png]
            wire_action(service, (go, stop), sample, ins, outs, "sample", cancel_api="cancel")

        with gr.Tab("Encode & reconstruct"):
            with gr.Row():
                rec_in = gr.Image(type="filepath", label="tile", format="png", sources=["upload", "clipboard"])
                with gr.Column():
                    picker(service, tiles, rec_in, "…or pick a tile")
                    rec_T = gr.Slider(1, 200, value=T, step=1, label="DDIM steps (inversion and rendering)")
                    rec_seed = gr.Number(0, precision=0, label="seed of the random x_T")
                    rec_go, rec_stop = action_buttons("Encode & reconstruct", "reconstruct-button")
            rec_gallery = gr.Gallery(label="input | inferred x_T | z_sem only", columns=3, format="png")
            rec_info, rec_png = result_area("PNG strip")

            @as_ui_error
            def reconstruct(path, T, seed, progress=gr.Progress()):  # noqa: B008
                """The tile's inferred-x_T and z_sem-only reconstructions with PSNR."""
                images, r = service.reconstruct(path, int(T), int(seed), progress_fn(progress))
                captions = [
                    "input",
                    f"inferred x_T: {r['psnr_inferred']:.2f} dB",
                    f"z_sem only: {r['psnr_zsem_only']:.2f} dB",
                ]
                text = (
                    f"PSNR inferred x_T **{r['psnr_inferred']:.2f} dB**, z_sem only (random x_T) "
                    f"**{r['psnr_zsem_only']:.2f} dB**; DDIM-{int(T)}, {r['seconds']:.2f} s; input {r['fit']}"
                )
                return list(zip(out.tiles(images), captions, strict=True)), text, out.save("reconstruct", images)

            ins, outs = [rec_in, rec_T, rec_seed], [rec_gallery, rec_info, rec_png]
            wire_action(service, (rec_go, rec_stop), reconstruct, ins, outs, "reconstruct")

        with gr.Tab("Interpolate"):
            with gr.Row():
                a = gr.Image(type="filepath", label="tile A", format="png", sources=["upload", "clipboard"])
                b = gr.Image(type="filepath", label="tile B", format="png", sources=["upload", "clipboard"])
                with gr.Column():
                    picker(service, tiles, a, "…or pick tile A")
                    picker(service, tiles, b, "…or pick tile B")
                    frames = gr.Slider(2, min(32, max_n), value=min(8, max_n), step=1, label="frames")
                    int_T = gr.Slider(1, 200, value=T, step=1, label="DDIM steps")
                    int_go, int_stop = action_buttons("Interpolate", "interpolate-button")
            frame = gr.Slider(0, 7, value=0, step=1, label="frame (0 = A, last = B)")
            frame_view = gr.Image(label="frame", format="png", interactive=False)
            int_state = gr.State([])
            int_gallery = gr.Gallery(label="all frames (z_sem lerped, x_T slerped)", columns=8, format="png")
            int_info, int_png = result_area("PNG strip")

            @as_ui_error
            def interpolate(path_a, path_b, frames, T, progress=gr.Progress()):  # noqa: B008
                """Frames between two tiles: z_sem lerped, inverted x_T slerped."""
                images, text = service.interpolate(path_a, path_b, int(frames), int(T), progress_fn(progress))
                views = out.tiles(images)
                slider = gr.Slider(0, len(views) - 1, value=len(views) // 2, step=1)
                return (
                    views,
                    views[len(views) // 2],
                    slider,
                    views,
                    text,
                    out.save("interpolate", images, nrow=len(views)),
                )

            ins, outs = [a, b, frames, int_T], [int_state, frame_view, frame, int_gallery, int_info, int_png]
            wire_action(service, (int_go, int_stop), interpolate, ins, outs, "interpolate")
            frame.change(
                lambda views, i: views[int(i)] if views and int(i) < len(views) else None,
                [int_state, frame],
                frame_view,
                api_visibility="private",
                **CONTROL,
            )

        with gr.Tab("Manipulate"):
            if not feat.can_manipulate:
                gr.Markdown(f"**{feat.manipulate_message}**", elem_id="manipulate-disabled")
            with gr.Row():
                man_in = gr.Image(type="filepath", label="tile", format="png", sources=["upload", "clipboard"])
                with gr.Column():
                    picker(service, tiles, man_in, "…or pick a tile")
                    target = gr.Dropdown(
                        feat.manipulate_classes,
                        value=feat.manipulate_classes[0] if feat.manipulate_classes else None,
                        label="target class",
                        allow_custom_value=True,  # the service's message names the classes (and says when off)
                    )
                    alpha = gr.Slider(-1, 1, value=0.3, step=0.05, label="α (step along the class direction, × √D)")
                    man_T = gr.Slider(1, 200, value=T, step=1, label="DDIM steps")
                    manip = feat.can_manipulate
                    man_go, man_stop = action_buttons("Manipulate", "manipulate-button", interactive=manip)
            man_gallery = gr.Gallery(label="input | reconstruction (α = 0) | manipulated", columns=3, format="png")
            man_info, man_png = result_area("PNG strip")

            @as_ui_error
            def manipulate(path, target, alpha, T, progress=gr.Progress()):  # noqa: B008
                """Move a tile's z_sem along a class direction by α; render with its own x_T."""
                images, text = service.manipulate(path, target, float(alpha), int(T), progress_fn(progress))
                captions = ["input", "α = 0", f"α = {float(alpha):g}"]
                return list(zip(out.tiles(images), captions, strict=True)), text, out.save("manipulate", images)

            ins, outs = [man_in, target, alpha, man_T], [man_gallery, man_info, man_png]
            wire_action(service, (man_go, man_stop), manipulate, ins, outs, "manipulate")

        with gr.Tab("Inpaint"):
            with gr.Row():
                inp_in = gr.Image(
                    type="filepath", label="image (a tile or larger)", format="png", sources=["upload", "clipboard"]
                )
                inp_mask = gr.Image(
                    type="filepath",
                    label="mask (optional; white = fill, same size)",
                    format="png",
                    sources=["upload", "clipboard"],
                )
                with gr.Column():
                    picker(service, tiles, inp_in, "…or pick a tile")
                    preset = gr.Radio(list(MASK_PRESETS), value=MASK_PRESETS[0], label="mask without an upload")
                    hole = gr.Slider(0.05, 0.95, value=0.4, step=0.05, label="hole size (fraction of the side)")
                    inp_T = gr.Slider(1, 200, value=T, step=1, label="DDIM steps")
                    with gr.Row():
                        inp_seed = gr.Number(0, precision=0, label="seed")
                        resample = gr.Slider(1, 10, value=1, step=1, label="resample (RePaint jumps per step)")
                    inp_go, inp_stop = action_buttons("Inpaint", "inpaint-button")
            inp_view = gr.Image(label="input, hole in magenta | result", format="png", interactive=False)
            inp_info, inp_png = result_area("inpainted PNG (native resolution)")

            @as_ui_error
            def inpaint(path, mask_path, preset, size, T, seed, resample, progress=gr.Progress()):  # noqa: B008
                """Fill the masked pixels of an image; z_sem from its real pixels (as task=inpaint)."""
                x01, mask, result01, text = service.inpaint(
                    path, mask_path, preset, float(size), int(T), int(seed), int(resample), progress_fn(progress)
                )
                result = to_uint8(result01)[0]
                comp = comparison_image(to_uint8(x01)[0], mask, result)
                view, n = out.enlarge(comp, service.image_size), out.number()
                out.save_array("inpaint", view, "_comparison", n)
                return view, text, out.save_array("inpaint", result, n=n)

            ins, outs = [inp_in, inp_mask, preset, hole, inp_T, inp_seed, resample], [inp_view, inp_info, inp_png]
            wire_action(service, (inp_go, inp_stop), inpaint, ins, outs, "inpaint")

        with gr.Tab("Mosaic"):
            S = service.image_size
            if not feat.can_sample:
                gr.Markdown(
                    "**z_sem=field and a shared z_sem without a tile are off: this checkpoint has no trained latent "
                    "DDIM (stage 2). z_sem=shared from a tile works.**",
                    elem_id="mosaic-field-disabled",
                )
            with gr.Row():
                mos_in = gr.Image(
                    type="filepath", label="tile for the shared z_sem", format="png", sources=["upload", "clipboard"]
                )
                with gr.Column():
                    picker(service, tiles, mos_in, "…or pick a tile")
                    with gr.Row():
                        mos_w = gr.Number(3 * S, precision=0, label="width (px)")
                        mos_h = gr.Number(3 * S, precision=0, label="height (px)")
                        mos_seed = gr.Number(0, precision=0, label="seed")
                    z_sem = gr.Radio(
                        ["shared", "field"],
                        value="shared",
                        label="z_sem: one code (the tile's, or a latent draw) | a smooth field of latent draws",
                    )
                    mos_T = gr.Slider(1, 200, value=T, step=1, label="DDIM steps")
                    mos_lT = gr.Slider(1, 200, value=T_latent, step=1, label="latent steps (latent draws)")
                    mos_batch = gr.Slider(1, 64, value=service.batch_size, step=1, label="windows per forward pass")
                    gr.Markdown(f"At most {service.max_mosaic_pixels} px (`max_mosaic_pixels`); windows of {S} px.")
                    mos_go, mos_stop = action_buttons("Mosaic", "mosaic-button")
            mos_view = gr.Image(label="mosaic", format="png", interactive=False)
            mos_info, mos_png = result_area("mosaic PNG (native resolution)")

            @as_ui_error
            def mosaic(width, height, seed, T, z_sem, path, T_latent, batch, progress=gr.Progress()):  # noqa: B008
                """One large image by MultiDiffusion windows (as task=mosaic)."""
                image01, text = service.mosaic(
                    int(width), int(height), int(seed), int(T), z_sem, path, int(T_latent), int(batch),
                    progress_fn(progress),
                )  # fmt: skip
                image = to_uint8(image01)[0]
                return out.enlarge(image, service.image_size), text, out.save_array("mosaic", image)

            ins, outs = [mos_w, mos_h, mos_seed, mos_T, z_sem, mos_in, mos_lT, mos_batch], [mos_view, mos_info, mos_png]
            wire_action(service, (mos_go, mos_stop), mosaic, ins, outs, "mosaic")

        def jobs() -> str:
            """The finished jobs (id, name, status, start/end in monotonic seconds) as JSON."""
            return json.dumps(service.jobs.history)

        gr.api(jobs, api_name="jobs", **CONTROL)
    return app


def launch_kwargs(host: str, port: int, run_dir: Path) -> dict[str, Any]:
    """Arguments of ``Blocks.launch`` for a local, offline explorer."""
    return {
        "server_name": host,
        "server_port": int(port),
        "show_error": True,  # the service's messages reach the page and the API's callers
        "prevent_thread_lock": True,
        "share": False,
        "ssr_mode": False,  # no Node server: the bundled static frontend only
        "allowed_paths": [str(run_dir)],
        "quiet": True,
    }
