"""Live paint: how long from the end of a brush stroke to the redrawn H&E, and does the viewer stall meanwhile?

A real viewer (under Xvfb) with the sample nuclei (DSB 2018, 512² px at 0.25 µm/px) and the Labels → H&E dock,
``live`` ticked with the chosen model (default: the bundled demo model; live runs its fast settings). Then N
scripted strokes: each is a few brush dabs along a short line (one undo item, as a mouse drag makes), painting a
new nucleus or erasing one, at seeded random places. For each stroke the latency is the time from the stroke's end
to the output layer holding the redrawn pixels (the 250 ms pause included); a QTimer asking to fire every 5 ms
measures the event loop's longest stall meanwhile (as ``bench_ui_stall.py``).

    xvfb-run -a nice -n 10 .venv/bin/python benchmarks/bench_live_paint.py [--strokes 20] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ui_stall import measure, summary  # noqa: E402


def stroke(layer, rng, label: int) -> None:  # type: ignore[no-untyped-def]
    """A drag of 6 dabs along a line of ~30 px (one history item: one paint event at its end); an erasing stroke
    (label 0) starts on a nucleus, so that it erases something."""
    import numpy as np

    h, w = layer.data.shape
    if label == 0:
        ys, xs = np.nonzero(layer.data[20 : h - 50, 20 : w - 50])
        k = rng.integers(ys.size)
        y0, x0 = ys[k] + 20, xs[k] + 20
    else:
        y0, x0 = rng.integers(20, h - 50), rng.integers(20, w - 50)
    angle = rng.uniform(0, np.pi)
    with layer.block_history():
        for t in np.linspace(0, 30, 6):
            layer.paint((y0 + t * np.sin(angle), x0 + t * np.cos(angle)), label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--strokes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="tile the sample labels N×N (a larger layer)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    import napari_crafts.generation.live as live_module
    from napari_crafts._sample_data import nuclei_sample

    regenerate, work_s, boxes = live_module.regenerate, [], []

    def timed(live, labels, box):  # type: ignore[no-untyped-def]
        """The dock's regeneration, with the CPU time of its thread (all of its work with OMP_NUM_THREADS=1)."""
        t0 = time.thread_time()
        update = yield from regenerate(live, labels, box)
        work_s.append(time.thread_time() - t0)
        boxes.append([int(v) for v in update.box])
        return update

    live_module.regenerate = timed  # the dock imports it when a regeneration starts
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    for data, meta, kind in nuclei_sample():
        viewer._add_layer_from_data(np.tile(data, (args.repeat, args.repeat)), meta, kind)
    labels = viewer.layers[-1]
    _, w = viewer.window.add_plugin_dock_widget("napari-crafts", "Labels → H&E")
    w._labels_layer.value = labels
    w.controls._model.value = args.model
    load = os.getloadavg()
    idle = summary(measure(app, seconds=3))  # the event loop's own stalls on this machine, nothing running
    start = time.perf_counter()
    w.live.on = True
    first = summary(measure(app, until=lambda: w.live.live is not None and not w.runner.running))
    first_s = time.perf_counter() - start
    if w.live.live is None:
        raise SystemExit(f"live did not start: {w.live._text.value} / {w.runner._status.value}")
    print(
        f"first live run: {first_s:.1f} s (model loading included), longest stall {first['max_ms']:.0f} ms; "
        f"{w.live._text.value}"
    )
    rng = np.random.default_rng(args.seed)
    latencies, cpu, stalls, drawn, tiles, long = [], [], [], [], [], []
    for i in range(args.strokes):
        measure(app, seconds=0.3)  # the user looks at the result before the next stroke
        label = 0 if i % 4 == 3 else 1000 + i  # every fourth stroke erases
        stroke(labels, rng, label)
        end, cpu_end = time.perf_counter(), time.process_time()
        gaps = measure(
            app,
            until=lambda n=i + 1, t0=end: (
                (w.live.updates >= n and w.live._worker is None) or time.perf_counter() > t0 + 120
            ),
            long=long,
        )
        if w.live.updates < i + 1:
            raise SystemExit(f"stroke {i + 1}: no update within 120 s ({w.live._text.value})")
        latencies.append(time.perf_counter() - end)
        cpu.append(time.process_time() - cpu_end)
        # the first gap is napari drawing the stroke itself (live has only restarted its timer by then)
        drawn.append(gaps[0] if gaps else 0.0)
        stalls.append(max(gaps[1:]) if len(gaps) > 1 else 0.0)
        tiles.append(w.live._text.value)
        print(
            f"stroke {i + 1:2d}: {latencies[-1] * 1000:6.0f} ms to pixels ({cpu[-1]:.2f} CPU s), longest stall "
            f"{stalls[-1]:5.1f} ms"
        )
    load_after = os.getloadavg()
    lat = np.asarray(latencies) * 1000
    result = {
        "model": args.model,
        "labels_px": list(labels.data.shape),
        "strokes": args.strokes,
        "settings": w.live.live.settings.record(),
        "tiles_in_region": len(w.live.live.plan.grid),
        "first_run_s": first_s,
        "first_run_stall_ms": first["max_ms"],
        "latency_ms": {
            "p50": float(np.percentile(lat, 50)),
            "p90": float(np.percentile(lat, 90)),
            "max": float(lat.max()),
            "all": [round(v) for v in lat],
        },
        "process_cpu_s_per_stroke": {"p50": float(np.median(cpu)), "p90": float(np.percentile(cpu, 90))},
        "regeneration_thread_cpu_s": {
            "p50": float(np.median(work_s)),
            "p90": float(np.percentile(work_s, 90)),
            "count": len(work_s),
        },
        "updated_boxes": boxes,
        "torch_threads": os.environ.get("OMP_NUM_THREADS", "default (physical cores)"),
        "longest_stall_ms": float(max(stalls)),
        "idle_longest_stall_ms": idle["max_ms"],
        "stroke_drawing_ms": {"p50": float(np.median(drawn)), "max": float(max(drawn))},
        "stalls_over_100ms_at": long,
        "debounce_ms": 250,
        "load_average_before": load,
        "load_average_after": load_after,
        "cpus": os.cpu_count(),
    }
    print(
        f"latency stroke end → pixels: p50 {result['latency_ms']['p50']:.0f} ms, p90 "
        f"{result['latency_ms']['p90']:.0f} ms, max {result['latency_ms']['max']:.0f} ms (targets 1000 / 2000)"
    )
    print(
        f"CPU time of this process per stroke (the work itself, whatever the load): p50 {np.median(cpu):.2f} s, "
        f"p90 {np.percentile(cpu, 90):.2f} s"
    )
    print(
        f"CPU time of the regeneration's thread: p50 {np.median(work_s):.2f} s, p90 {np.percentile(work_s, 90):.2f} s "
        f"({len(work_s)} regenerations; torch threads: {result['torch_threads']})"
    )
    print(
        f"longest event-loop stall during live updates: {result['longest_stall_ms']:.1f} ms (target < 100); "
        f"idle, before live: {idle['max_ms']:.1f} ms"
    )
    print(f"load average before {load[0]:.1f}, after {load_after[0]:.1f} on {os.cpu_count()} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    viewer.close()


if __name__ == "__main__":
    main()
