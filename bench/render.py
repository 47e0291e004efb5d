"""The measured section of bench/results.md, from bench/results.json (bench/run_all.py)."""

from __future__ import annotations

from end_to_end import stage_rows


def _get(results: dict, name: str) -> dict | None:
    entry = results["benchmarks"].get(name)
    return entry.get("result") if entry else None


def _verdict(value: float | None, target: float, at_least: bool = True) -> str:
    if value is None:
        return "not run"
    return "met" if (value >= target if at_least else value <= target) else "**missed**"


def summary_rows(results: dict) -> list[tuple[str, str, str, str]]:
    """(what, measured, target, verdict) for each target of the issue."""
    rows = []
    train = _get(results, "train_throughput")
    if train:
        layouts = train["layouts"]
        for name, kind, label in (
            ("2x1", "petastorm", "MFU, demo layout (2 ranks x 1 thread), Petastorm loader"),
            ("2x1", "memory", "MFU, 2 ranks x 1 thread, data in memory"),
            ("1x2", "memory", "MFU, 1 process x 2 threads, data in memory"),
        ):
            mfu = layouts[name][kind]["mfu"]
            rows.append((label, f"{mfu:.2f}", ">= 0.50", _verdict(mfu, 0.5)))
        eff = train["scaling_efficiency"]
        rows.append(("Horovod scaling efficiency, 2x1 / (2 x 1x1)", f"{eff:.2f}", ">= 0.90", _verdict(eff, 0.9)))
    loader = _get(results, "loader_throughput")
    if loader:
        rows.append(("loader windows/s / one rank's consumption", f"{loader['ratio']:.0f}", ">= 10", _verdict(loader["ratio"], 10)))
    pre = _get(results, "preprocess_throughput")
    if pre:
        rows.append(
            (f"preprocess MB/s, Spark local[2] / one process ({pre['corpus_mb']:.0f} MB)", f"{pre['ratio']:.2f}", ">= 1.5", _verdict(pre["ratio"], 1.5))
        )
        if "rss_ratio" in pre:
            r = pre["rss_ratio"]
            label = f"driver peak RSS, {r['sizes_mb'][1]} MB / {r['sizes_mb'][0]} MB of corpus"
            rows.append((label, f"{r['driver_rss_ratio']:.2f}", "<= 1.3", _verdict(r["driver_rss_ratio"], 1.3, at_least=False)))
    gen = _get(results, "generate_throughput")
    if gen:
        rows.append(("generation tokens/s, cache / no cache (256 new tokens)", f"{gen['ratio']:.2f}", ">= 3", _verdict(gen["ratio"], 3)))
    quality = _get(results, "quality")
    if quality:
        for run in quality["runs"]:
            label = f"validation nats/char after {run['budget']:.0f} {run['unit']} of training, {run['init']} init"
            rows.append((label, f"{run['nats_per_character']:.3f}", "(nanoGPT char-level: 1.88 after ~60 s)", "-"))
    return rows


def render(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Measured {m['date']} on {m['nproc']} cores of an {m['cpu_model']} (Python {m['python']}, torch {m['torch']}); "
        f"load average (1, 5, 15 min) {m['load_average']} at the start and {m.get('load_average_end')} at the end. "
        f"`make bench` took **{results.get('wall_seconds', float('nan')) / 60:.1f} minutes**.",
        "",
        "| target | measured | target | verdict |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(results)]
    lines += ["", "Per benchmark (seconds, 1-minute load average before and after):", ""]
    for name, entry in results["benchmarks"].items():
        status = "" if entry.get("status") == 0 else f", **failed ({entry.get('status')})**"
        lines.append(f"- `{name}`: {entry['seconds']:.0f} s, load {entry['load_before'][0]} -> {entry['load_after'][0]}{status}")
    lines += _train_details(_get(results, "train_throughput"))
    lines += _loader_details(_get(results, "loader_throughput"))
    lines += _preprocess_details(_get(results, "preprocess_throughput"))
    lines += _quality_details(_get(results, "quality"))
    lines += _generate_details(_get(results, "generate_throughput"))
    lines += _e2e_details(_get(results, "end_to_end"))
    return "\n".join(lines)


def _train_details(train: dict | None) -> list[str]:
    if not train:
        return []
    lines = [
        "",
        "### Training throughput (`bench/train_throughput.py`)",
        "",
        f"Default model: {train['parameters'] / 1e6:.2f}M parameters, {train['flops_per_token'] / 1e6:.1f} MFLOP per token; "
        f"medians of {train['repeats']} repetitions x {train['steps']} steps; overrides {train['overrides'] or 'none'}, env {train['env'] or 'none'}.",
        "",
        "| layout | batch/rank | tokens/s (memory) | MFU (memory) | tokens/s (Petastorm) | MFU (Petastorm) | Petastorm / memory | peak GFLOP/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, layout in train["layouts"].items():
        batch = train["runs"][name][0]["batch_size"]
        mem, pet = layout.get("memory", {}), layout.get("petastorm")
        pet_cells = f"{pet['tokens_per_s']:.0f} | {pet['mfu']:.2f} | {layout['petastorm_over_memory']:.2f}" if pet else "- | - | -"
        lines.append(f"| {name} | {batch} | {mem['tokens_per_s']:.0f} | {mem['mfu']:.2f} | {pet_cells} | {layout['peak_gflops']:.0f} |")
    lines += [
        "",
        f"Scaling efficiency {train['scaling_efficiency']:.2f}; a rank's CPU seconds per step in 2x1 over 1x1: "
        f"{train.get('cpu_per_step_2x1_over_1x1', float('nan')):.2f}. Allreduce of the {train['gradient_mb']:.1f} MB of gradients alone: "
        f"{1000 * train['allreduce_s']:.0f} ms, {100 * train['allreduce_share_of_step']:.1f}% of a 2x1 step; the wait left after the "
        f"backward pass (Horovod overlaps the allreduce with it): {100 * train['exposed_sync_share_of_step']:.1f}% of the step.",
    ]
    return lines


def _loader_details(loader: dict | None) -> list[str]:
    if not loader:
        return []
    return [
        "",
        "### Data loading (`bench/loader_throughput.py`)",
        "",
        f"One rank's Petastorm reader and loader (rank 0 of 2, batches of {loader['batch_size']}): {loader['windows_per_s']:.0f} windows/s "
        f"(first batch {loader['first_batch_s']:.2f} s after opening); one training rank consumes {loader['consumed_windows_per_s']:.1f} windows/s; "
        f"ratio {loader['ratio']:.0f}. The loader spends {1e6 * loader['cpu_s_per_window']:.0f} CPU-us per window: "
        f"{100 * loader['loader_core_share_at_consumption']:.2f}% of a core while it feeds one rank.",
    ]


def _preprocess_details(pre: dict | None) -> list[str]:
    if not pre:
        return []
    lines = [
        "",
        "### Preprocessing (`bench/preprocess_throughput.py`)",
        "",
        f"{pre['corpus_mb']:.1f} MB generated corpus, the bench tokenizer, Word2Vec off. Spark local[2]: {pre['spark_mb_per_s']:.2f} MB/s; "
        f"one process: {pre['single_mb_per_s']:.2f} MB/s; ratio {pre['ratio']:.2f} (with the session's {pre['spark_start_s']:.1f} s start: "
        f"{pre['ratio_with_spark_start']:.2f}). Windows written: Spark {pre['windows']['spark']}, one process {pre['windows']['single']}.",
    ]
    if "cpu_s" in pre:
        cpu = pre["cpu_s"]
        lines.append(
            f"CPU seconds per run: Spark {cpu['spark_total']:.1f} (JVM {cpu['spark']['jvm']:.1f}, Python workers {cpu['spark']['workers']:.1f}, "
            f"driver {cpu['spark']['driver']:.1f}), one process {cpu['single_total']:.1f}: on 2 idle cores the ratio can reach at most "
            f"{pre['ratio_bound_from_cpu']:.2f}."
        )
    if "rss" in pre:
        lines += ["", "| corpus MB | seconds (whole job) | MB/s | driver peak RSS MB | JVM peak RSS MB |", "| --- | --- | --- | --- | --- |"]
        for row in pre["rss"].values():
            lines.append(
                f"| {row['corpus_mb']:.0f} | {row['seconds']:.0f} | {row['mb_per_s']:.2f} | {row['driver_peak_rss_mb']:.0f} | {row['jvm_peak_rss_mb']:.0f} |"
            )
    return lines


def _quality_details(quality: dict | None) -> list[str]:
    if not quality:
        return []
    lines = [
        "",
        "### Quality per CPU-minute (`bench/quality.py`)",
        "",
        f"Corpus {quality['corpus']}: first 90% ({quality['train_characters'] / 1e6:.2f} M characters, {quality['train_tokens']} tokens) trains, "
        f"last 10% ({quality['val_characters'] / 1e6:.2f} M characters) validates; {quality['ranks']} rank(s).",
        "",
        "| budget | init | steps | tokens/s | epochs | val nats/token | val nats/char | val bits/char |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in quality["runs"]:
        lines.append(
            f"| {r['budget']:.0f} {r['unit']} | {r['init']} | {r['steps']} | {r['tokens_per_s']:.0f} | {r['epochs']:.2f} | "
            f"{r['nll_per_token']:.3f} | {r['nats_per_character']:.3f} | {r['bits_per_character']:.3f} |"
        )
    return lines


def _generate_details(gen: dict | None) -> list[str]:
    if not gen:
        return []
    return [
        "",
        "### Generation (`bench/generate_throughput.py`)",
        "",
        f"{gen['new_tokens']} new tokens, {gen['threads']} thread: {gen['tokens_per_second_with_cache']:.0f} tokens/s with the key/value cache, "
        f"{gen['tokens_per_second_without_cache']:.0f} without; ratio {gen['ratio']:.2f}; same greedy output: {gen['same_greedy_output']}.",
    ]


def _e2e_details(e2e: dict | None) -> list[str]:
    if not e2e:
        return []
    rows = [*stage_rows(e2e), ("**total**", e2e["wall_s"])]
    lines = ["", "### End to end (`bench/end_to_end.py`)", "", f"`{e2e['command']}`", "", "| stage | seconds |", "| --- | --- |"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in rows]
    pre = ", ".join(f"{k} {v:.1f}" for k, v in e2e["preprocess_stages_s"].items())
    lines += ["", f"Preprocess stages (seconds): {pre}. Training: {e2e['training_tokens_per_s']:.0f} tokens/s, mean MFU {e2e['mfu_mean']:.2f}."]
    return lines
