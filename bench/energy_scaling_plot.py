#!/usr/bin/env python3
"""Table and plots of the energy scaling study (bench/energy_service_run.py scaling, run on the GPU machine
by scripts/device/bench-energy-scaling.sh). Runs here, where matplotlib is (Debian's python3-matplotlib):

  /usr/bin/python3 bench/energy_scaling_plot.py bench/results/energy_scaling_h200.json

Writes next to the JSON: energy_scaling_<tag>.md (one row per job: shape, seconds and joules per phase,
the estimate and its error) and energy_scaling_<tag>_{frames,steps,resolution}.png (latency and energy
against the swept quantity; for frames and resolution also against latent tokens, where the paper's model
predicts quadratic growth from the attention, and for steps linear growth).
"""
import json
import os
import sys


def table(document):
    lines = [f"# {document['benchmark']} on {document['device']} (commit {document['commit']}, {document['date']})", "",
             "| sweep | W×H×frames | steps | tokens | run s | text s | denoise s | decode s | encode s | energy J | "
             "denoise J | decode J | estimate s | error s | estimate J | error J | calibration jobs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def percent(value):
        return "" if value is None else f"{100 * value:+.1f} %"
    for job in document["jobs"]:
        lines.append(
            f"| {job['sweep']} | {job['width']}×{job['height']}×{job['frames']} | {job['steps']} | {job['tokens']} | "
            f"{job['run_s']:.2f} | {job['text_s']:.2f} | {job['denoise_s']:.2f} | {job['decode_s']:.2f} | "
            f"{job['video_encode_s']:.2f} | {job['gpu_energy_j']:.0f} | {job['denoise_j']:.0f} | {job['decode_j']:.0f} | "
            f"{job['estimate_run_s']:.2f} | {percent(job['run_error'])} | {job['estimate_energy_j']:.0f} | "
            f"{percent(job['energy_error'])} | {job['calibration_jobs']} |")
    return "\n".join(lines) + "\n"


def plot(document, sweep, x_key, x_label, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    jobs = sorted((job for job in document["jobs"] if job["sweep"] == sweep), key=lambda job: job[x_key])
    if not jobs:
        return None
    xs = [job[x_key] for job in jobs]
    figure, latency_axis = plt.subplots(figsize=(6, 4))
    latency_axis.plot(xs, [job["run_s"] for job in jobs], "o-", color="tab:blue", label="run time (s)")
    latency_axis.plot(xs, [job["denoise_s"] for job in jobs], "s--", color="tab:cyan", label="of which denoise (s)")
    latency_axis.set_xlabel(x_label)
    latency_axis.set_ylabel("seconds")
    energy_axis = latency_axis.twinx()
    energy_axis.plot(xs, [job["gpu_energy_j"] / 1000 for job in jobs], "^-", color="tab:red", label="GPU energy (kJ)")
    energy_axis.set_ylabel("kJ")
    handles = latency_axis.get_legend_handles_labels()[0] + energy_axis.get_legend_handles_labels()[0]
    labels = latency_axis.get_legend_handles_labels()[1] + energy_axis.get_legend_handles_labels()[1]
    latency_axis.legend(handles, labels, loc="upper left", fontsize=8)
    latency_axis.set_title(f"{document['device']}: {sweep} sweep", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    source = sys.argv[1]
    document = json.load(open(source))
    stem = os.path.splitext(source)[0]
    with open(stem + ".md", "w") as file:
        file.write(table(document))
    written = [stem + ".md"]
    for sweep, x_key, label in (("frames", "frames", "frames"), ("steps", "steps", "denoising steps"),
                                ("resolution", "tokens", "latent tokens (resolution)")):
        path = plot(document, sweep, x_key, label, f"{stem}_{sweep}.png")
        if path:
            written.append(path)
    print("\n".join(written))


if __name__ == "__main__":
    main()
