"""The pictures of steps 10 and 11 (the batch-size sweep, dynamic batching), in the report's style."""
import matplotlib

matplotlib.use("Agg")  # files only: no display needed, works on CI machines
import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)
from matplotlib import ticker  # noqa: E402

def plain_log_scale(axes, which):
    """A log scale on the x or y axis, labelled 1, 2, 5, 10, 20, ... rather than in powers of ten."""
    getattr(axes, f"set_{which}scale")("log")
    axis = getattr(axes, f"{which}axis")
    axis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def plot_sweep(path, summaries, within, title):
    """Step 10: throughput (with its runs' range), latency and GPU memory against batch size, and latency against
    throughput."""
    figure, ((by_size, latency), (trade, held)) = plt.subplots(2, 2, figsize=(15, 10), layout="constrained")
    colors = {"engine": "#1f5fbf", "pytorch": "#d9730d"}
    all_sizes = sorted({row["batch_size"] for summary in summaries for row in summary["rows"]})
    for summary in summaries:
        color = colors.get(summary["name"], "black")
        rows = [row for row in summary["rows"] if not row["failure"]]
        sizes = [row["batch_size"] for row in rows]
        throughput = [row["images_per_s"] for row in rows]
        latency_ms = [row["latency_ms"] for row in rows]
        label = f"{summary['name']}: {summary['label']}"
        runs = [row["throughput_runs"] or [row["images_per_s"]] for row in rows]
        spread = [[value - min(r) for value, r in zip(throughput, runs)],
                  [max(r) - value for value, r in zip(throughput, runs)]]
        by_size.errorbar(sizes, throughput, yerr=spread, marker="o", color=color, capsize=3, label=label)
        latency.plot(sizes, latency_ms, marker="o", color=color, label=label)
        plot_memory(held, summary, rows, color)
        trade.plot(throughput, latency_ms, marker="o", color=color, label=label)
        for row in rows:
            trade.annotate(str(row["batch_size"]), (row["images_per_s"], row["latency_ms"]), fontsize=8,
                           textcoords="offset points", xytext=(4, -10), color=color)
        for knee in (row for row in rows if row["batch_size"] in summary.get("knee_candidates", [summary["knee"]])):
            named = summary["knee"] is not None  # else: candidates the noise cannot tell apart, hollow stars
            for axes, point in ((by_size, (knee["batch_size"], knee["images_per_s"])),
                                (latency, (knee["batch_size"], knee["latency_ms"])),
                                (trade, (knee["images_per_s"], knee["latency_ms"]))):
                axes.plot(*point, marker="*", markersize=16, color=color if named else "none", markeredgecolor="black",
                          linestyle="none")
                axes.annotate(f"knee: {knee['batch_size']}" if named else f"knee? {knee['batch_size']}", point,
                              textcoords="offset points", xytext=(-12, 2), ha="right", va="bottom", fontsize=9,
                              color=color, fontweight="bold")
        for size in summary["out_of_memory"]:
            for axes in (by_size, latency, held):
                axes.axvline(size, color=color, linestyle=":", linewidth=1)
                axes.annotate("out of memory", (size, 0.5), xycoords=("data", "axes fraction"), rotation=90,
                              fontsize=8, color=color, ha="right", va="center")
    for axes in (by_size, latency, held):
        axes.set_xscale("log", base=2)
        axes.set_xticks(all_sizes, [str(size) for size in all_sizes], fontsize=8)
        axes.set_xlabel("batch size (images)")
    by_size.set_ylabel("throughput (images/s), batches back to back")
    by_size.set_ylim(bottom=0)
    by_size.set_title(f"Throughput (bars: the runs' range): the knee is the smallest batch within {within:.0%} of the "
                      "peak", fontsize=10)
    for axes in (latency, trade):
        plain_log_scale(axes, "y")
    latency.set_ylabel("latency of one batch (ms): H2D + inference + D2H")
    latency.set_title("Latency of a batch run alone", fontsize=10)
    trade.set_xlabel("throughput (images/s)")
    trade.set_ylabel("latency of one batch (ms)")
    trade.set_title("The trade-off (points: batch sizes); lower right is better", fontsize=10)
    held.set_ylabel("GPU memory (MiB)")
    held.set_ylim(bottom=0)
    held.set_title("GPU memory: activations (solid), in use (dashed); star: the largest batch that fits", fontsize=10)
    if held.lines:
        held.legend(fontsize=8, loc="upper left")
    for axes in (by_size, latency, trade, held):
        axes.grid(alpha=0.3)
    figure.legend(*by_size.get_legend_handles_labels(), loc="outside lower center", ncols=len(summaries), fontsize=9,
                  frameon=False)  # below the panels, where it hides no curve
    figure.suptitle(title, fontsize=11)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_memory(axes, summary, rows, color):
    """One sweep's memory against batch size, where its rows recorded it (results from before did not)."""
    sizes = [row["batch_size"] for row in rows if row.get("activations_mib") is not None]
    if not sizes:
        return
    axes.plot(sizes, [row["activations_mib"] for row in rows if row.get("activations_mib") is not None],
              marker="o", color=color, label=f"{summary['name']}: activations")
    in_use = [(row["batch_size"], row["peak_in_use_mib"]) for row in rows if row.get("peak_in_use_mib") is not None]
    if in_use:
        axes.plot(*zip(*in_use), marker=".", linestyle="--", color=color, label=f"{summary['name']}: in use")
    fits = next((row for row in rows if row["batch_size"] == summary.get("largest_that_fits")), None)
    if fits and fits.get("peak_in_use_mib") is not None:
        axes.plot(fits["batch_size"], fits["peak_in_use_mib"], marker="*", markersize=16, color=color,
                  markeredgecolor="black", linestyle="none")
        axes.annotate(f"fits: {fits['batch_size']} ({summary.get('fits_until')})",
                      (fits["batch_size"], fits["peak_in_use_mib"]), textcoords="offset points", xytext=(-12, 4),
                      ha="right", fontsize=9, color=color)


def plot_dynamic_batching(path, runs, title):
    """Step 11: latency (p50 and p99) against the throughput served, a curve per setting, points labelled by rate."""
    figure, panels = plt.subplots(1, 2, figsize=(14, 5.4), layout="constrained", sharey=True)
    settings = list(dict.fromkeys(run["setting"] for run in runs))
    colors = plt.get_cmap("tab10")
    for panel, (key, name) in zip(panels, (("p50_ms", "median (p50)"), ("p99_ms", "p99"))):
        for index, setting in enumerate(settings):
            points = [run for run in runs if run["setting"] == setting]
            served = [run["served_per_s"] for run in points]
            latency = [run[key] for run in points]
            style = "--" if points[0]["max_batch_size"] == 1 else "-"
            panel.plot(served, latency, style, marker="o", color=colors(index), label=setting)
            for run in points:
                panel.annotate(f"{run['offered_per_s']:g}/s", (run["served_per_s"], run[key]), fontsize=7,
                               textcoords="offset points", xytext=(4, 4), color=colors(index))
        for which in "xy":
            plain_log_scale(panel, which)
        panel.margins(x=0.08)  # room for the rate labels of the rightmost points
        panel.set_xlabel("throughput served (requests/s); labels: the offered arrival rate")
        panel.set_ylabel(f"{name} latency (ms)")
        panel.set_title(f"{name} latency, arrival to result", fontsize=10)
        panel.grid(alpha=0.3, which="both")
        panel.yaxis.set_tick_params(labelleft=True)
    panels[0].legend(fontsize=8, loc="upper left")
    figure.suptitle(title, fontsize=11)
    figure.savefig(path, dpi=110)
    plt.close(figure)
