"""Per-action latency of a running explorer (``task=explore``), measured over its HTTP API as a browser sees it.

    python run.py task=explore ckpt_path=... latents_path=... &           # prints http://127.0.0.1:7860/
    python scripts/bench_explore.py http://127.0.0.1:7860/ tile_a.png tile_b.png --class layered --field

Each action runs ``--repeats`` times after one warm-up; the table gives the median and the spread of the
round trip (request → PNGs back), and the server-side job time the page itself reports. The machine is shared
and noisy: compare actions within one run, not figures across runs.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time

from gradio_client import Client, handle_file


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("tile_a")
    p.add_argument("tile_b")
    p.add_argument("--class", dest="cls", default=None, help="target class of Manipulate (off if not given)")
    p.add_argument("--n", type=int, default=8, help="tiles per Sample request")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--T", type=int, default=20)
    p.add_argument("--T-latent", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mosaic", type=int, default=96, help="side (px) of the Mosaic requests")
    p.add_argument("--field", action="store_true", help="also time Mosaic with z_sem=field (needs a latent stage)")
    args = p.parse_args()
    client = Client(args.url, verbose=False)
    a, b = handle_file(args.tile_a), handle_file(args.tile_b)
    actions = {
        f"Sample ({args.n} tiles, latent DDIM-{args.T_latent} + DDIM-{args.T})": lambda: client.predict(
            args.n, 0, args.T, args.T_latent, "ddim", "", 1.0, api_name="/sample"
        ),
        f"Encode & reconstruct (inversion + 2 renders, DDIM-{args.T})": lambda: client.predict(
            a, args.T, 0, api_name="/reconstruct"
        ),
        f"Interpolate ({args.frames} frames, DDIM-{args.T})": lambda: client.predict(
            a, b, args.frames, args.T, api_name="/interpolate"
        ),
    }
    if args.cls:
        actions[f"Manipulate (inversion + 2 renders, DDIM-{args.T})"] = lambda: client.predict(
            a, args.cls, 0.3, args.T, api_name="/manipulate"
        )
    actions[f"Inpaint (tile_a, centre square 0.4, DDIM-{args.T})"] = lambda: client.predict(
        a, None, "centre square", 0.4, args.T, 0, 1, api_name="/inpaint"
    )
    side = args.mosaic
    actions[f"Mosaic ({side}×{side}, z_sem shared from tile_a, DDIM-{args.T})"] = lambda: client.predict(
        side, side, 0, args.T, "shared", a, args.T_latent, 16, api_name="/mosaic"
    )
    if args.field:
        actions[f"Mosaic ({side}×{side}, z_sem field, latent DDIM-{args.T_latent} + DDIM-{args.T})"] = lambda: (
            client.predict(side, side, 0, args.T, "field", None, args.T_latent, 16, api_name="/mosaic")
        )
    print(f"load average at start: {os.getloadavg()[0]:.1f}; median of {args.repeats} after one warm-up\n")
    print("| action | round trip (s) | min–max (s) | job on the server (s) |\n|---|---:|---:|---:|")
    for name, call in actions.items():
        call()
        walls, jobs = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = call()
            walls.append(time.perf_counter() - start)
            text = next(o for o in out if isinstance(o, str) and " s" in o)
            jobs.append(float(re.findall(r"([\d.]+) s\b", text)[0]))
        print(
            f"| {name} | {statistics.median(walls):.2f} | {min(walls):.2f}–{max(walls):.2f} | "
            f"{statistics.median(jobs):.2f} |"
        )


if __name__ == "__main__":
    main()
