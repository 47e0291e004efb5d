"""The measured section of bench/results.md and the README's benchmark headlines, both
from bench/results.json (bench/run_all.py). Nothing here is typed by hand: a figure in
either place is one this code measured, with the number of runs it is the median of.
tests/unit/test_bench_render.py checks that both files hold what this renders.
"""

from __future__ import annotations

import statistics

from end_to_end import outside_loop_s, stage_rows

MEASURED = ("<!-- measured:begin (bench/run_all.py rewrites this part) -->", "<!-- measured:end -->")
HEADLINES = ("<!-- bench-headlines:begin (bench/run_all.py writes this list from bench/results.json) -->", "<!-- bench-headlines:end -->")
RECIPE = ("<!-- recipe:begin (bench/run_all.py writes this table from horovod_llm/training/recipe.py) -->", "<!-- recipe:end -->")
QUALITY = ("<!-- quality:begin (bench/run_all.py writes this table from bench/results.json) -->", "<!-- quality:end -->")


def replace_between(text: str, markers: tuple[str, str], body: str) -> str:
    """`text` with what lies between the two markers replaced by `body`."""
    begin, end = markers
    head, found, rest = text.partition(begin)
    if not found or end not in rest:
        raise ValueError(f"markers {begin!r} ... {end!r} not found")
    _, _, tail = rest.partition(end)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def between(text: str, markers: tuple[str, str]) -> str:
    begin, end = markers
    return text.partition(begin)[2].partition(end)[0].strip("\n")


def _get(results: dict, name: str) -> dict | None:
    entry = results["benchmarks"].get(name)
    return entry.get("result") if entry else None


def _runs(n: int | None) -> str:
    """'median of 3 runs', or '1 run'."""
    if not n or n == 1:
        return "1 run"
    return f"median of {n} runs"


def _repeats(results: dict, result: dict) -> int:
    return result.get("repeats") or results.get("settings", {}).get("repeats") or 1


def _flags(machine: dict) -> str:
    """The CPU's kernel-deciding instruction sets, where the run recorded them."""
    return f" (flags: {', '.join(machine['cpu_flags']) or 'none of ' + ', '.join(('avx2', 'avx512_bf16', 'amx_bf16'))})" if "cpu_flags" in machine else ""


def _verdict(value: float | None, target: float, at_least: bool = True) -> str:
    if value is None:
        return "not run"
    return "met" if (value >= target if at_least else value <= target) else "**missed**"


def summary_rows(results: dict) -> list[tuple[str, str, str, str, str]]:
    """(what, measured, runs, target, verdict) for each figure with a target."""
    rows = []
    train = _get(results, "train_throughput")
    if train:
        layouts, runs = train["layouts"], _runs(train["repeats"])
        # A run before the calibrated peak (metrics.calibrated_peak_flops) divided by a peak
        # measured beside each step, which load lowered: its MFU gets no verdict.
        calibrated = "peak_source" in train["runs"]["2x1"][0]
        for name, kind, label in (
            ("2x1", "petastorm", "MFU, demo layout (2 ranks x 1 thread), Petastorm loader"),
            ("2x1", "memory", "MFU, 2 ranks x 1 thread, data in memory"),
            ("1x2", "memory", "MFU, 1 process x 2 threads, data in memory"),
        ):
            mfu = layouts[name][kind]["mfu"]
            verdict = _verdict(mfu, 0.5) if calibrated else "none: an older peak method (rerun `--only train_throughput`)"
            rows.append((label, f"{mfu:.2f}", runs, ">= 0.50", verdict))
        eff = train["scaling_efficiency"]
        rows.append(("Horovod scaling efficiency, 2x1 / (2 x 1x1)", f"{eff:.2f}", runs, ">= 0.90", _verdict(eff, 0.9)))
    loader = _get(results, "loader_throughput")
    if loader:
        rows.append(
            ("loader windows/s / one rank's consumption", f"{loader['ratio']:.0f}", _runs(_repeats(results, loader)), ">= 10", _verdict(loader["ratio"], 10))
        )
    pre = _get(results, "preprocess_throughput")
    if pre:
        label = f"preprocess MB/s, Spark local[2] / one process ({pre['corpus_mb']:.0f} MB)"
        rows.append((label, f"{pre['ratio']:.2f}", _runs(_repeats(results, pre)), ">= 1.5", _verdict(pre["ratio"], 1.5)))
        if "rss_ratio" in pre:
            r = pre["rss_ratio"]
            label = f"driver peak RSS, {r['sizes_mb'][1]} MB / {r['sizes_mb'][0]} MB of corpus"
            rows.append((label, f"{r['driver_rss_ratio']:.2f}", "1 run per size", "<= 1.3", _verdict(r["driver_rss_ratio"], 1.3, at_least=False)))
    gen = _get(results, "generate_throughput")
    if gen:
        rows.append(
            ("generation tokens/s, cache / no cache (256 new tokens)", f"{gen['ratio']:.2f}", _runs(_repeats(results, gen)), ">= 3", _verdict(gen["ratio"], 3))
        )
    serving = _get(results, "serve_batching")
    if serving:
        label = f"server tokens/s, {serving['clients']} concurrent clients, batched / one at a time ({serving['size']} model)"
        rows.append((label, f"{serving['ratio']:.2f}", _runs(_repeats(results, serving)), ">= 4", _verdict(serving["ratio"], 4)))
    quality = _get(results, "quality")
    if quality:
        for row in quality["summary"]:
            if "recipe_minus_reference" in row:
                label = f"held-out nats/char, recipe - {_reference_name(quality)}, {row['corpus']}, {row['budget_s']:.0f} s of training"
                verdict = _verdict(row["recipe_minus_reference"], QUALITY_TARGET, at_least=False)
                rows.append(
                    (
                        label,
                        f"{row['recipe_minus_reference']:+.3f}",
                        f"median of {row['recipe']['seeds']} runs (one per seed) per arm",
                        f"<= {QUALITY_TARGET:.2f}",
                        verdict,
                    )
                )
        for row in quality["summary"]:
            walls = _recipe_walls(quality, row)
            target = WHOLE_JOB_TARGETS_S.get(row["budget_s"])
            if target and walls:
                wall = statistics.median(walls)
                label = f"whole job, command to sample, {row['budget_s']:.0f} s of training on {row['corpus']} (recipe)"
                rows.append((label, f"{wall:.0f} s", f"median of {len(walls)} runs", f"<= {target:.0f} s", _verdict(wall, target, at_least=False)))
    e2e = _get(results, "end_to_end")
    if e2e:
        outside = outside_loop_s(e2e)
        label = f"`make demo`'s seconds outside its training loop ({e2e['machine']['cpu_model']})"
        rows.append((label, f"{outside:.1f} s", _e2e_runs(e2e), f"< {DEMO_OUTSIDE_TARGET_S:.0f} s", _demo_verdict(outside)))
    return rows


def render(results: dict) -> str:
    m = results["machine"]
    only = (results.get("settings") or {}).get("only")
    # A run with --only measures those benchmarks alone: the others keep their results,
    # each with its own date in the list below, and the header must not claim them.
    what = f"`bench/run_all.py --only {' '.join(only)}` took" if only else "`make bench` took"
    scope = " The other figures come from earlier runs: each benchmark's date is in the list below." if only else ""
    lines = [
        f"Last run {m['date']} on {m['nproc']} cores of an {m['cpu_model']}{_flags(m)} (Python {m['python']}, torch {m['torch']}); "
        f"load average (1, 5, 15 min) {m['load_average']} at the start and {m.get('load_average_end')} at the end. "
        f"{what} **{results.get('wall_seconds', float('nan')) / 60:.1f} minutes**.{scope}",
        "",
        "| figure | measured | runs | target | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in summary_rows(results)]
    lines += ["", "Per benchmark (seconds, 1-minute load average before and after):", ""]
    for name, entry in results["benchmarks"].items():
        status = "" if entry.get("status") == 0 else f", **failed ({entry.get('status')})**"
        if "gathered_from" in entry:
            lines.append(f"- `{name}`: run on its own (its results taken from `{entry['gathered_from']}`, measured {entry['result']['machine']['date']})")
            continue
        measured_on = (entry.get("result") or {}).get("machine") or {}
        date = measured_on.get("date") or entry.get("date")
        when = f", measured {date}" if date else ""
        if measured_on.get("cpu_model", m["cpu_model"]) != m["cpu_model"]:
            when += f" on an {measured_on['cpu_model']}{_flags(measured_on)}"
        lines.append(f"- `{name}`: {entry['seconds']:.0f} s{when}, load {entry['load_before'][0]} -> {entry['load_after'][0]}{status}")
    lines += _train_details(_get(results, "train_throughput"))
    lines += _loader_details(results, _get(results, "loader_throughput"))
    lines += _preprocess_details(results, _get(results, "preprocess_throughput"))
    lines += _quality_details(_get(results, "quality"))
    lines += _word2vec_details(_get(results, "quality_word2vec"))
    lines += _sweep_details([entry["result"] for name, entry in sorted(results["benchmarks"].items()) if name.startswith("sweep") and entry.get("result")])
    lines += _launcher_details(results, _get(results, "launchers"))
    lines += _overhead_details(_get(results, "overhead"), _get(results, "overhead_before"))
    lines += _paired_details(_get(results, "gradient_reduction"))
    lines += _paired_details(_get(results, "gc_alignment"))
    lines += _paired_details(_get(results, "shared_memory_barrier"))
    lines += _paired_details(_get(results, "core_binding"))
    lines += _paired_details(_get(results, "core_binding_spark"))
    lines += _paired_details(_get(results, "core_binding_torch_distributor"))
    lines += _profile_details([_get(results, name) for name in ("profile_loop_before", "profile_loop")])
    lines += _bootstrap_details(_get(results, "bootstrap_paths"))
    lines += _generate_details(results, _get(results, "generate_throughput"))
    lines += _serving_details(results, _get(results, "serve_batching"))
    lines += _decode_block_details(_get(results, "decode_blocks"))
    lines += _e2e_details(_get(results, "end_to_end"), _get(results, "end_to_end_before"))
    lines += _precision_details(_get(results, "precision"))
    lines += _gpu_details(_get(results, "gpu_check"))
    return "\n".join(lines)


def main_cpu(results: dict) -> str:
    """The CPU most of the benchmarks' results were measured on (the GPU check aside)."""
    cpus = [((entry.get("result") or {}).get("machine") or {}).get("cpu_model") for name, entry in results["benchmarks"].items() if name != "gpu_check"]
    cpus = [c for c in cpus if c]
    return max(sorted(set(cpus)), key=cpus.count) if cpus else results["machine"]["cpu_model"]


def headlines(results: dict) -> str:
    """The README's summary of the last `make bench`, as a Markdown list."""
    m = results["machine"]
    cpu = main_cpu(results)

    def add(name: str, line: str) -> None:
        """A headline, naming its CPU where that is not the header's (a benchmark rerun alone elsewhere)."""
        measured_on = ((_get(results, name) or {}).get("machine") or {}).get("cpu_model")
        if measured_on and measured_on != cpu and name != "gpu_check":  # the GPU check names its machine itself
            line = f"{line[:-1]} on an {measured_on}{line[-1]}"
        lines.append(line)

    dates = sorted({((entry.get("result") or {}).get("machine") or {}).get("date") or entry.get("date") for entry in results["benchmarks"].values()} - {None})
    when = f"between {dates[0]} and {dates[-1]}" if len(dates) > 1 else f"on {m['date']}"
    lines = [
        f"Measured by `make bench` {when} (benchmarks rerun one at a time keep their own dates, in `bench/results.md`), {m['nproc']} cores of an {cpu} (a line measured on another CPU names it), torch {m['torch']}:",
        "",
    ]
    train = _get(results, "train_throughput")
    if train:
        runs = _runs(train["repeats"])
        mfus = [train["layouts"][name][kind]["mfu"] for name, kind in (("2x1", "petastorm"), ("2x1", "memory"), ("1x2", "memory"))]
        calibrated = "peak_source" in train["runs"]["2x1"][0]
        peak = "the machine type's best measured fp32 matmul peak" if calibrated else "an fp32 matmul peak measured beside each step (that run's method)"
        add("train_throughput", f"- training reaches {min(mfus):.2f} to {max(mfus):.2f} model FLOPs utilisation against {peak} ({runs} of each layout);")
        add(
            "train_throughput",
            f"- 2 Horovod ranks scale with an efficiency of {train['scaling_efficiency']:.2f} over one rank ({runs}; a rank spends "
            f"{train['cpu_per_step_2x1_over_1x1']:.2f}x the CPU seconds per step beside a second rank);",
        )
    launchers = _get(results, "launchers")
    if launchers:
        horovod, torch_distributor = launchers["launchers"]["spark"], launchers["launchers"]["torch_distributor"]
        add(
            "launchers",
            f"- on 2 ranks, Spark's TorchDistributor trains at {launchers['torch_over_horovod_tokens_per_s_2']:.2f}x Horovod's tokens/s "
            f"(scaling from 1 to 2 ranks {torch_distributor['scaling_efficiency']:.2f} against {horovod['scaling_efficiency']:.2f}) and reaches its "
            f"first step {torch_distributor['startup_s_2']:.0f} s after launch against {horovod['startup_s_2']:.0f} s ({_runs(launchers['repeats'])});",
        )
    overhead = _get(results, "overhead")
    if overhead:
        horovod = overhead["spark"]
        add(
            "overhead",
            f"- a Horovod rank's training step runs at {horovod['in_step_over_bare_1']:.3f} (1 rank) and {horovod['in_step_over_bare_2']:.3f} (2 ranks) "
            f"of a bare loop's tokens/s, the whole loop at {horovod['loop_over_bare_1']:.3f} and {horovod['loop_over_bare_2']:.3f} "
            f"(targets {overhead['targets']['in_step_over_bare']} and {overhead['targets']['loop_over_bare']}); 2 ranks scale {horovod['in_step_scaling']:.3f} "
            f"(target {overhead['targets']['scaling']}: {_verdict(horovod['in_step_scaling'], overhead['targets']['scaling']).strip('*')}) "
            f"where 2 bare processes reach {overhead['bare']['scaling']:.2f} ({_runs(overhead['repeats'])});",
        )
    boot = _get(results, "bootstrap_paths")
    if boot:
        paths = boot["paths"]
        add(
            "bootstrap_paths",
            f"- a node's bootstrap for TorchDistributor takes {paths['torch_distributor']['seconds']:.0f} s here, against "
            f"{paths['horovod_built_on_the_node']['seconds']:.0f} s for Horovod built on the node and {paths['horovod_prebuilt_wheel']['seconds']:.0f} s "
            "with a prebuilt wheel (fresh venvs, this machine's pip cache, 1 run);",
        )
    loader = _get(results, "loader_throughput")
    if loader:
        add("loader_throughput", f"- the Petastorm loader delivers {loader['ratio']:.0f}x what a training rank consumes ({_runs(_repeats(results, loader))});")
    pre = _get(results, "preprocess_throughput")
    if pre and "rss_ratio" in pre:
        r, rss = pre["rss_ratio"], pre["rss"]
        small, large = rss[str(r["sizes_mb"][0])], rss[str(r["sizes_mb"][1])]
        add(
            "preprocess_throughput",
            f"- preprocessing's Python driver peaks at {small['driver_peak_rss_mb']:.0f} MB on {small['corpus_mb']:.0f} MB of text and "
            f"{large['driver_peak_rss_mb']:.0f} MB on {large['corpus_mb']:.0f} MB (ratio {r['driver_rss_ratio']:.2f}); Spark's JVM grows from "
            f"{small['jvm_peak_rss_mb']:.0f} to {large['jvm_peak_rss_mb']:.0f} MB (1 run per size);",
        )
    gen = _get(results, "generate_throughput")
    if gen:
        add(
            "generate_throughput",
            f"- the key/value cache speeds decoding up {gen['ratio']:.2f}x ({gen['tokens_per_second_with_cache']:.0f} against "
            f"{gen['tokens_per_second_without_cache']:.0f} tokens/s, {_runs(_repeats(results, gen))});",
        )
    serving = _get(results, "serve_batching")
    if serving:
        add(
            "serve_batching",
            f"- with {serving['clients']} concurrent clients the server decodes {serving['tokens_per_second_batched']:.0f} tokens/s batched, "
            f"{serving['ratio']:.2f}x the {serving['tokens_per_second_one_at_a_time']:.0f} of one request at a time ({_runs(_repeats(results, serving))});",
        )
    blocks = _get(results, "decode_blocks")
    if blocks:
        ratios = [row["blocks_over_unpadded_time"] for size in blocks["sizes"].values() for row in size["batches"].values()]
        add(
            "decode_blocks",
            f"- decoding in fixed blocks of {blocks['row_block']} rows, which makes a request's output independent of its neighbours, "
            f"takes {min(ratios):.2f}x to {max(ratios):.2f}x the time of one unpadded step over the batch (batches of "
            f"{', '.join(next(iter(blocks['sizes'].values()))['batches'])} rows, {_runs(blocks['repeats'])} of each);",
        )
    quality = _get(results, "quality")
    if quality:
        for row in quality["summary"]:
            if "recipe_minus_reference" in row:
                add(
                    "quality",
                    f"- after {row['budget_s']:.0f} s of training on the {row['corpus']} corpus, the recipe's model scores "
                    f"{row['recipe']['median']:.3f} nats per character on held-out text, against {row[_reference_arm(quality)]['median']:.3f} for "
                    f"{_reference_name(quality)} trained for as long (medians of {row['recipe']['seeds']} runs, one per seed);",
                )
    e2e = _get(results, "end_to_end")
    if e2e:
        outside = outside_loop_s(e2e)
        add(
            "end_to_end",
            f"- `{e2e['command']}` took {e2e['wall_s']:.0f} s end to end, {outside:.1f} s of it outside the training loop "
            f"(target < {DEMO_OUTSIDE_TARGET_S:.0f} s: {_demo_verdict(outside).strip('*')}; {_e2e_runs(e2e)}).",
        )
    gpu = _get(results, "gpu_check")
    if gpu and "gpt2-small-bf16" in gpu["arms"]:
        eager, env = gpu["arms"]["gpt2-small-bf16"], gpu["environment"]
        compiled = gpu["arms"].get("gpt2-small-compiled-bf16")
        also = f" ({compiled['mfu']:.0%} compiled)" if compiled else ""
        add(
            "gpu_check",
            f"- on one {env['gpu']} (another machine: torch {env['torch']}, no Spark), a GPT-2-small-sized model "
            f"({eager['params'] / 1e6:.0f}M parameters, context {eager['shape']['block_size']}) trains in bf16 at "
            f"{eager['tokens_per_s']:,.0f} tokens/s, {eager['mfu']:.0%} of the GPU's bf16 peak{also} (`bench/gpu_check.py`, 1 run).",
        )
    return "\n".join(lines)


def _train_details(train: dict | None) -> list[str]:
    if not train:
        return []
    lines = [
        "",
        "### Training throughput (`bench/train_throughput.py`)",
        "",
        f"Default model: {train['parameters'] / 1e6:.2f}M parameters, {train['flops_per_token'] / 1e6:.1f} MFLOP per token; "
        f"medians of {train['repeats']} runs x {train['steps']} steps; overrides {train['overrides'] or 'none'}, env {train['env'] or 'none'}. "
        + (
            "MFU is model FLOP/s over the fp32 matmul peak training uses: the best reading of this machine type and layout "
            "(`metrics.calibrated_peak_flops`), so that a busy machine lowers throughput, never the denominator."
            if "peak_source" in train["runs"]["2x1"][0]
            else "MFU is model FLOP/s over an fp32 matmul peak measured right after each step (this run's method; a busy machine lowered it)."
        ),
        "",
        "| layout | batch/rank | tokens/s (memory) | model GFLOP/s (memory) | MFU (memory) | tokens/s (Petastorm) | MFU (Petastorm) | "
        "Petastorm / memory | peak GFLOP/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, layout in train["layouts"].items():
        batch = train["runs"][name][0]["batch_size"]
        mem, pet = layout.get("memory", {}), layout.get("petastorm")
        pet_cells = f"{pet['tokens_per_s']:.0f} | {pet['mfu']:.2f} | {layout['petastorm_over_memory']:.2f}" if pet else "- | - | -"
        gflops = f"{mem['model_gflops']:.0f}" if "model_gflops" in mem else "-"
        lines.append(f"| {name} | {batch} | {mem['tokens_per_s']:.0f} | {gflops} | {mem['mfu']:.2f} | {pet_cells} | {layout['peak_gflops']:.0f} |")
    lines += [
        "",
        f"Scaling efficiency {train['scaling_efficiency']:.2f}; a rank's CPU seconds per step in 2x1 over 1x1: "
        f"{train.get('cpu_per_step_2x1_over_1x1', float('nan')):.2f}. Allreduce of the {train['gradient_mb']:.1f} MB of gradients alone: "
        f"{1000 * train['allreduce_s']:.0f} ms, {100 * train['allreduce_share_of_step']:.1f}% of a 2x1 step; the wait left after the "
        f"backward pass (Horovod overlaps the allreduce with it): {100 * train['exposed_sync_share_of_step']:.1f}% of the step (medians of {train['repeats']} runs).",
    ]
    return lines


def _loader_details(results: dict, loader: dict | None) -> list[str]:
    if not loader:
        return []
    return [
        "",
        "### Data loading (`bench/loader_throughput.py`)",
        "",
        f"One rank's Petastorm reader and loader (rank 0 of 2, batches of {loader['batch_size']}): {loader['windows_per_s']:.0f} windows/s "
        f"(first batch {loader['first_batch_s']:.2f} s after opening); one training rank consumes {loader['consumed_windows_per_s']:.1f} windows/s; "
        f"ratio {loader['ratio']:.0f}. The loader spends {1e6 * loader['cpu_s_per_window']:.0f} CPU-us per window: "
        f"{100 * loader['loader_core_share_at_consumption']:.2f}% of a core while it feeds one rank ({_runs(_repeats(results, loader))}).",
    ]


def _preprocess_details(results: dict, pre: dict | None) -> list[str]:
    if not pre:
        return []
    runs = _runs(_repeats(results, pre))
    lines = [
        "",
        "### Preprocessing (`bench/preprocess_throughput.py`)",
        "",
        f"{pre['corpus_mb']:.1f} MB generated corpus, the bench tokenizer, Word2Vec off; {runs}. Spark local[2]: {pre['spark_mb_per_s']:.2f} MB/s; "
        f"one process: {pre['single_mb_per_s']:.2f} MB/s; ratio {pre['ratio']:.2f} (with the session's {pre['spark_start_s']:.1f} s start: "
        f"{pre['ratio_with_spark_start']:.2f}). Windows written: Spark {pre['windows']['spark']}, one process {pre['windows']['single']}.",
    ]
    if "cpu_s" in pre:
        cpu = pre["cpu_s"]
        lines.append(
            f"CPU seconds per run ({runs}): Spark {cpu['spark_total']:.1f} (JVM {cpu['spark']['jvm']:.1f}, Python workers {cpu['spark']['workers']:.1f}, "
            f"driver {cpu['spark']['driver']:.1f}), one process {cpu['single_total']:.1f}. With both cores busy all the time, Spark's wall time is at least "
            f"half its CPU seconds, which bounds the ratio at {pre['ratio_bound_from_cpu']:.2f}"
            + (
                "."
                if pre["ratio"] <= pre["ratio_bound_from_cpu"]
                else ": the measured ratio is higher, so this run's CPU meter missed work (it did not yet count Python workers that had exited)."
            )
        )
    if "rss" in pre:
        lines += ["", "| corpus MB | seconds (whole job) | MB/s | driver peak RSS MB | JVM peak RSS MB |", "| --- | --- | --- | --- | --- |"]
        for row in pre["rss"].values():
            lines.append(
                f"| {row['corpus_mb']:.0f} | {row['seconds']:.0f} | {row['mb_per_s']:.2f} | {row['driver_peak_rss_mb']:.0f} | {row['jvm_peak_rss_mb']:.0f} |"
            )
        lines.append("")
        lines.append("1 run per size, each a fresh process running the whole default job (tokenizer training and Word2Vec included).")
    return lines


def _quality_arms(quality: dict) -> list[str]:
    """The recipe, the reported reference, then any other arm the run measured."""
    measured = dict.fromkeys(r["arm"] for r in quality["runs"])
    return ["recipe", _reference_arm(quality), *(arm for arm in measured if arm not in ("recipe", _reference_arm(quality)))]


NANOGPT_CPU = (
    "nanoGPT's CPU configuration for character-level text (4 layers, 4 heads, width 128, context 64, batch 12, dropout 0, "
    "learning rate 1e-3 decayed to 1e-4 over the budget)"
)


def _quality_method(quality: dict) -> list[str]:
    """How the quality runs were made, arm by arm."""
    lines = [
        "Each recipe run is `horovod-llm run` with `train.max_minutes` = the budget (2 ranks x 1 thread) on the training slice, then "
        f"`horovod-llm evaluate --text-file` on the held-out one: {_split_words(quality)}. Arms:",
        "",
        "- recipe: the settings the product chooses for the corpus and the budget;",
    ]
    described = {
        "reference_bare": f"- reference_bare: {NANOGPT_CPU}, trained in nanoGPT's own kind of loop: one plain process on every core, "
        "batches at random offsets of the token array, no pipeline (`bench/reference_trainer.py`);",
        "reference": f"- reference: {NANOGPT_CPU}, inside this pipeline: this package's model, a character-level tokenizer, no Word2Vec, 2 ranks x 1 thread;",
        "recipe_random_init": "- recipe_random_init: the recipe without Word2Vec initialisation;",
    }
    lines += [described[arm] for arm in _quality_arms(quality)[1:] if arm in described]
    return [*lines, f"- recipe - reference: the recipe against {_reference_arm(quality)}.", ""]


def _quality_details(quality: dict | None) -> list[str]:
    if not quality:
        return []
    arms = _quality_arms(quality)
    lines = [
        "",
        "### Quality per CPU-second (`bench/quality.py`)",
        "",
        *_quality_method(quality),
        f"Held-out nats per character, medians of {_seeds(quality)} seeds (each seed's value in brackets):",
        "",
        "| corpus | budget | recipe | " + " | ".join(arms[1:]) + " | recipe - reference |",
        "| --- | --- | --- | " + " | ".join("---" for _ in arms[1:]) + " | --- |",
    ]

    def cell(row: dict, arm: str) -> str:
        if arm not in row:
            return "-"
        return f"{row[arm]['median']:.3f} ({', '.join(f'{v:.3f}' for v in row[arm]['values'])})"

    for row in quality["summary"]:
        diff = f"{row['recipe_minus_reference']:+.3f}" if "recipe_minus_reference" in row else "-"
        lines.append(f"| {row['corpus']} | {row['budget_s']:.0f} s | " + " | ".join(cell(row, arm) for arm in arms) + f" | {diff} |")
    lines += [
        "",
        "| corpus | budget | arm | settings | parameters | steps | tokens/s | epochs | chars/token | whole run (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    first_seed = min(r["seed"] for r in quality["runs"])
    for r in quality["runs"]:
        if r["seed"] != first_seed:
            continue
        settings = ", ".join(f"{k}={v}" for k, v in r["recipe"].items())
        lines.append(
            f"| {r['corpus']} | {r['budget_s']:.0f} s | {r['arm']} | {settings} | {r['parameters'] / 1e6:.2f}M | {r['steps']} | {r['tokens_per_s']:.0f} | "
            f"{r['epochs']:.1f} | {r['characters_per_token']:.2f} | {r['run_wall_s']:.0f} |"
        )
    lines += ["", f"(The second table shows seed {first_seed} of each arm: the settings each arm trained with, from its final checkpoint's config.)"]
    lines += _wait_details(quality)
    return lines


def _word2vec_details(paired: dict | None) -> list[str]:
    """Word2Vec initialisation's effect under the recipe: both arms in the same run."""
    if not paired:
        return []
    lines = [
        "",
        "Word2Vec initialisation under the recipe (`bench/quality.py --arms recipe recipe_random_init`, held-out nats/char, "
        f"medians of {paired['seeds']} seed(s), measured {paired['machine']['date']}):",
        "",
        "| corpus | budget | with Word2Vec | random initialisation | Word2Vec's gain |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in paired["summary"]:
        if "recipe" in row and "recipe_random_init" in row:
            with_, without = row["recipe"]["median"], row["recipe_random_init"]["median"]
            lines.append(f"| {row['corpus']} | {row['budget_s']:.0f} s | {with_:.3f} | {without:.3f} | {without - with_:.3f} |")
    return lines


def _reference_arm(quality: dict) -> str:
    """The arm the recipe was reported against: results from before bench/quality.py
    named one reported the in-pipeline `reference`."""
    return quality.get("reference_arm", "reference")


def _commits(quality: dict) -> str:
    """The checkouts the runs used, where the results name them (a bench resumed later)."""
    commits = quality.get("commits") or []
    return f" (code at {', '.join(f'`{c}`' for c in commits)})" if commits else ""


def _split_words(quality: dict) -> str:
    """Which text trained and which scored: results from before the development slice
    trained on 90% and scored on the rest."""
    chars = f"the first {quality['corpus_chars'] / 1e6:.1f} M characters of each corpus (fewer where it is shorter)"
    if all("scored_on" in r for r in quality["runs"]):
        return f"the first 80% by position of {chars}, scored on its last 10%, which no sweep scored on (sweeps tune on the 80-90% slice, with other seeds)"
    return f"the first 90% of {chars}, scored on its last 10%"


def _reference_name(quality: dict) -> str:
    if _reference_arm(quality) == "reference_bare":
        return "nanoGPT's CPU configuration in its own kind of loop (bench/reference_trainer.py)"
    return "the reference configuration inside this pipeline"


def _seeds(quality: dict) -> str:
    """How many seeds the medians are of: one number, or a range when a row has fewer."""
    counts = sorted({row[arm]["seeds"] for row in quality["summary"] for arm in ("recipe", _reference_arm(quality)) if arm in row})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"


def _wait_details(quality: dict) -> list[str]:
    """Where the whole job's time goes besides the training budget: the recipe arm's runs,
    medians over seeds, per budget."""
    lines = ["", "The wait for a first model (recipe arm, seconds, medians over seeds and corpora):", ""]
    lines += ["| budget | Spark start | preprocess | Horovod start | rank set-up | training loop | wrap-up | generation | whole job |"]
    lines += ["| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for budget in sorted({r["budget_s"] for r in quality["runs"]}):
        runs = [r for r in quality["runs"] if r["arm"] == "recipe" and r["budget_s"] == budget]
        if not runs:
            continue

        def med(values: list[float]) -> str:
            return f"{sorted(values)[len(values) // 2]:.1f}"

        cells = [med([r["stages_s"]["spark_start"] for r in runs]), med([r["stages_s"]["preprocess"] for r in runs])]
        cells += [med([r["train_stage_s"][k] for r in runs]) for k in ("horovod_start", "rank_setup", "training_loop", "wrap_up")]
        cells += [med([r["stages_s"]["generate"] for r in runs]), med([r["run_wall_s"] for r in runs])]
        lines.append(f"| {budget:.0f} s | " + " | ".join(cells) + " |")
    return lines


def _sweep_details(sweeps: list[dict]) -> list[str]:
    lines = []
    for sweep in sweeps:
        lines += [
            "",
            f"### Recipe sweep: {sweep['corpus']}, {sweep['budget_s']:.0f} s of training (`bench/sweep.py`, 1 seed each, measured {sweep['machine']['date']})",
            "",
            f"On {sweep['machine']['nproc']} cores of an {sweep['machine']['cpu_model']}{_flags(sweep['machine'])}. Each variant changes the rule "
            "as it stood when the sweep ran (the `recipe` row); the settings column is what each run trained with, as its dataset's manifest "
            "records it, and the precision what its ranks trained in (fp32 before `train.precision` existed).",
            "",
            "| variant | overrides | settings | precision | held-out nats/char | parameters | steps | tokens/s | epochs |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in sweep["runs"]:
            changed = " ".join(o for o in r["overrides"]) or (
                "(nanoGPT's trainer, `bench/reference_trainer.py`)" if r.get("arm") == "reference_bare" else "(the rule)"
            )
            settings = ", ".join(f"{k}={v}" for k, v in r["recipe"].items() if k != "model_type")
            lines.append(
                f"| {r['variant']} | {changed} | {settings} | {r.get('precision', 'fp32')} | {r['nats_per_character']:.3f} | {r['parameters'] / 1e6:.2f}M | "
                f"{r['steps']} | {r['tokens_per_s']:.0f} | {r['epochs']:.1f} |"
            )
    return lines


# Issue 28's targets: the recipe at least 0.10 nats/char below the reference on every corpus
# and budget, and a 90 s budget's whole job (command to sample, 1 MB) within 120 s.
QUALITY_TARGET = -0.10
WHOLE_JOB_TARGETS_S = {90.0: 120.0}


def _recipe_walls(quality: dict, row: dict) -> list[float]:
    """The whole-job seconds of the recipe's runs behind a summary row (one per seed)."""
    return [r["run_wall_s"] for r in quality["runs"] if (r["corpus"], r["budget_s"], r["arm"]) == (row["corpus"], row["budget_s"], "recipe")]


def quality_table(results: dict) -> str:
    """The README's quality figures: held-out nats per character per budget, the recipe
    against the reference arm, and how long the whole job took."""
    quality = _get(results, "quality")
    if not quality:
        return '(not measured yet: `make bench BENCH_ARGS="--only quality"`)'
    m = quality["machine"]
    lines = [
        f"Measured by `bench/quality.py` on {m['date']}, {m['nproc']} cores of an {m['cpu_model']}{_commits(quality)}: held-out nats per character "
        f"(lower is better; medians of {_seeds(quality)} seeds), each run `horovod-llm run` with `train.max_minutes` set to the budget, "
        f"2 ranks x 1 thread, on {_split_words(quality)}. The whole job counts everything from the command to the sample: Spark, "
        "preprocessing with Word2Vec, Horovod's start, training and generation.",
        "",
        f"| corpus | training budget | recipe | {_reference_arm(quality)} | difference (target <= {QUALITY_TARGET:+.2f}) | whole job, recipe (s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in quality["summary"]:
        if "recipe" not in row:
            continue
        reference = f"{row[_reference_arm(quality)]['median']:.3f}" if _reference_arm(quality) in row else "-"
        diff = "-"
        if "recipe_minus_reference" in row:
            diff = f"{row['recipe_minus_reference']:+.3f}, {_verdict(row['recipe_minus_reference'], QUALITY_TARGET, at_least=False)}"
        wall, target = statistics.median(_recipe_walls(quality, row)), WHOLE_JOB_TARGETS_S.get(row["budget_s"])
        wall_cell = f"{wall:.0f} (target <= {target:.0f}: {_verdict(wall, target, at_least=False)})" if target else f"{wall:.0f}"
        lines.append(f"| {row['corpus']} | {row['budget_s']:.0f} s | {row['recipe']['median']:.3f} | {reference} | {diff} | {wall_cell} |")
    lines += ["", *_pace(quality)]
    return "\n".join(lines)


def _pace(quality: dict) -> list[str]:
    """What a minute of training buys each arm on each corpus: medians over the arm's runs."""
    lines = []
    for corpus in dict.fromkeys(r["corpus"] for r in quality["runs"]):  # in the order they ran
        for arm in _quality_arms(quality):
            label = "the recipe" if arm == "recipe" else f"the {arm} arm"
            runs = [r for r in quality["runs"] if (r["corpus"], r["arm"]) == (corpus, arm)]
            if runs:
                steps_per_minute = statistics.median([60 * r["steps"] / r["trained_seconds"] for r in runs])
                tokens_per_s = statistics.median([r["tokens_per_s"] for r in runs])
                chars = statistics.median([r["characters_per_token"] for r in runs])
                lines.append(
                    f"- {corpus}, {label}: {steps_per_minute:.0f} steps and {60 * tokens_per_s * chars / 1e6:.2f} M characters of text "
                    f"per minute of training ({tokens_per_s:.0f} tokens/s x {chars:.2f} characters per token; medians of {len(runs)} runs)."
                )
    return lines


def recipe_table() -> str:
    """The rule of horovod_llm/training/recipe.py as Markdown, for the README beside the sweeps."""
    from horovod_llm.training import recipe

    def upto(limit: float, unit: str, scale: float) -> str:
        return "beyond" if limit == float("inf") else f"up to {limit / scale:g} {unit}"

    def swept(limit: float, swept_limits: tuple[float, ...]) -> str:
        return "swept" if limit in swept_limits else "not swept: extrapolated"

    lines = ["| corpus | vocabulary | source |", "| --- | --- | --- |"]
    lines += [f"| {upto(limit, 'MB', 1e6)} | {size} | {swept(limit, recipe.SWEPT_CORPUS_LIMITS)} |" for limit, size in recipe.VOCABULARY]
    lines += [
        "",
        "| budget | layers | heads | width | context (tokens) | learning rate (decays to a tenth) | source |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {upto(limit, 'minutes', 60)} | {n_layer} | {n_head} | {n_embd} | {window} | {lr:g} | {swept(limit, recipe.SWEPT_BUDGET_LIMITS)} |"
        for limit, n_layer, n_head, n_embd, window, lr in recipe.MODEL
    ]
    lines += [
        "",
        f"Always: {recipe.choose(1, 1).batch_size} windows per rank per step, {recipe.choose(1, 1).warmup_steps} warm-up steps. "
        f"Windows overlap by half their length and dropout is {recipe.DROPOUT[0][1]:g} unless the budget allows more than "
        f"{recipe.REPEATED_FROM_EPOCHS:g} epochs of the corpus (estimated at {recipe.TOKENS_PER_S} tokens/s and {recipe.CHARS_PER_TOKEN:g} "
        f"characters per token); then a window starts every 1/{recipe.WINDOW_STARTS_PER_WINDOW_REPEATED} of its length, and dropout is "
        + ", ".join(f"{dropout:g} up to {most:g} epochs" if most != float("inf") else f"{dropout:g} beyond" for most, dropout in recipe.DROPOUT[1:])
        + ". Without `train.max_minutes` the rule "
        f"assumes {recipe.DEFAULT_BUDGET_S / 60:g} minutes.",
    ]
    return "\n".join(lines)


def _generate_details(results: dict, gen: dict | None) -> list[str]:
    if not gen:
        return []
    return [
        "",
        "### Generation (`bench/generate_throughput.py`)",
        "",
        f"{gen['new_tokens']} new tokens, {gen['threads']} thread: {gen['tokens_per_second_with_cache']:.0f} tokens/s with the key/value cache, "
        f"{gen['tokens_per_second_without_cache']:.0f} without; ratio {gen['ratio']:.2f} ({_runs(_repeats(results, gen))}); "
        f"same greedy output: {gen['same_greedy_output']}.",
    ]


def _launcher_details(results: dict, launchers: dict | None) -> list[str]:
    if not launchers:
        return []
    lines = [
        "",
        "### Launchers (`bench/launchers.py`)",
        "",
        f"The demo recipe, {launchers['runs'][0]['parameters'] / 1e6:.2f}M parameters, {launchers['runs'][0]['tokens_per_step'] // max(launchers['runs'][0]['ranks'], 1)} "
        f"tokens per rank per step, one torch thread per rank, {launchers['steps']} steps per run from no checkpoint, one local[2] Spark session, the launchers alternating; "
        f"medians of {_runs(launchers['repeats'])}; load average {launchers['load_before']} -> {launchers['load_after']}.",
        "",
        "| launcher | collectives | tokens/s, 1 rank | tokens/s, 2 ranks | scaling 1 -> 2 | start-up, 1 rank | start-up, 2 ranks |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in launchers["launchers"].items():
        lines.append(
            f"| `{name}` | {row['backend']} | {row['tokens_per_s_1']:.0f} | {row['tokens_per_s_2']:.0f} | {row['scaling_efficiency']:.2f} | "
            f"{row['startup_s_1']:.1f} s | {row['startup_s_2']:.1f} s |"
        )
    lines += ["", "Start-up: from `launch_training` to the first step (rank processes, imports, the collectives meeting, model and reader)."]
    return lines


# What each comparison of bench/paired.py is, its arms in order (the change first); a
# result from before the comparisons had names (the first, of the reduction) has no "arms".
PAIRED_TITLES = {
    "reduction": "The gradients' average: shared memory against loopback TCP",
    "gc": "Python's collector at shared steps against its own moments",
    "barrier": "The shared-memory reduction's meeting: named pipes against the backend's barrier",
    "binding": "Each rank on a core of its own against the kernel's placement",
}


def _paired_details(paired: dict | None) -> list[str]:
    if not paired:
        return []
    compare = paired.get("compare", "reduction")
    arms = list(paired.get("arms") or ("shared_memory", "tcp"))
    machine = paired["machine"]
    lines = [
        "",
        f"### {PAIRED_TITLES[compare]} (`bench/paired.py --compare {compare}`)",
        "",
        f"2 ranks x 1 thread of the demo recipe in fp32, {paired['minutes']:g} minute(s) of training per run at the demo's evaluation and checkpoint intervals, "
        f"one local[2] Spark session, on {machine['nproc']} cores of an {machine['cpu_model']} (code {paired['commit']}); "
        f"each pair two runs back to back that differ only in the setting compared, the first arm alternating; "
        f"medians of {_runs(paired['pairs'])}; load average {paired['load_before']} -> {paired['load_after']}.",
        "",
        "| launcher | arm | gradients averaged by | in-step tokens/s | loop tokens/s | allreduce wait, share of the loop |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in paired["launchers"].items():
        for arm in reversed(arms):
            figures = row[arm]
            lines.append(
                f"| `{name}` | {arm} | {', '.join(figures['reductions'])} | {figures['in_step_tokens_per_s']:.0f} | {figures['loop_tokens_per_s']:.0f} | "
                f"{figures['allreduce_wait_share']:.1%} |"
            )
    lines.append("")
    for name, row in paired["launchers"].items():
        per_pair = ", ".join(f"{r:.3f}" for r in row["in_step_tokens_per_s_ratio_per_pair"])
        lines.append(
            f"- `{name}`: {arms[0]} / {arms[1]}, in-step {row['in_step_tokens_per_s_ratio']:.3f} (pairs: {per_pair}), "
            f"over the loop {row['loop_tokens_per_s_ratio']:.3f}."
        )
    return lines


def _profile_details(profiles: list[dict | None]) -> list[str]:
    profiles = [p for p in profiles if p]
    if not profiles:
        return []
    categories = sorted({c for p in profiles for c in p["mean_shares"]}, key=lambda c: -max(p["mean_shares"].get(c, 0.0) for p in profiles))
    lines = [
        "",
        "### Where the training loop's time goes (`bench/profile_loop.py`)",
        "",
        "py-spy on both ranks of `horovod-llm train` (the demo recipe, 2 ranks x 1 thread, fp32, the demo's intervals, "
        f"{profiles[0]['minutes']:g} minute(s) of training): each rank's samples inside the training loop by what it was calling, the ranks' mean.",
        "",
        "| part of the loop | " + " | ".join(f"{p['label'] or 'commit'} ({p['commit']})" for p in profiles) + " |",
        "| --- |" + " --- |" * len(profiles),
    ]
    for category in categories:
        lines.append(f"| {category} | " + " | ".join(f"{p['mean_shares'].get(category, 0.0):.1%}" for p in profiles) + " |")
    return lines


def _judged_pair(first: float, second: float, target: float) -> str:
    """Two ratios to 3 decimals (0.845 must not read as a met 0.85) and whether both
    reach their target."""
    return f"{first:.3f} / {second:.3f}: {_verdict(min(first, second), target)}"


def _overhead_details(overhead: dict | None, before: dict | None = None) -> list[str]:
    if not overhead:
        return []
    targets = overhead["targets"]
    # Bare runs before the bench dataset's windows (bench/bare_loop.py) trained on random ids.
    bare_data = "the bench dataset's windows" if overhead["bare_runs"][0].get("data") == "windows" else "random ids"
    # Bare runs since bench/bare_loop.py recorded its binding (after a1c5ad5) say where they ran.
    bound = any(p.get("cores") for run in overhead["bare_runs"] for p in run.get("per_process", []))
    bare_bound = ", bound to a core each as Horovod's ranks are, `train.bind_cores`" if bound else ""
    lines = [
        "",
        "### The training loop against a bare loop (`bench/overhead.py`)",
        "",
        f"The demo recipe's model in fp32, one torch thread per rank. Bare: 1 and 2 plain processes on {bare_data} in memory (2: their sum{bare_bound}). "
        f"Product: {overhead['minutes']:g} minute(s) of training per run at the demo's evaluation and checkpoint intervals, one local[2] Spark session; "
        f"in-step: every timed step's tokens over the steps' summed time (loading, step, allreduce), the bare loop's own estimator; "
        f"loop: every step over the loop's wall time. Each product run against the mean of the bare runs just before and after it "
        f"(the machine's speed drifts within minutes), blocks of 1, 2, 1, ..., 1 ranks ({overhead['repeats']} of 2 ranks); scaling: each 2-rank run "
        f"over the mean of its launcher's 1-rank runs in the blocks on either side of it, as the bare arm's; medians over the blocks; "
        f"load average {overhead['load_before']} -> {overhead['load_after']}.",
        "",
        f"| arm | tokens/s, 1 rank | tokens/s, 2 ranks | in-step / bare, 1 / 2 ranks (target {targets['in_step_over_bare']}) | "
        f"loop / bare, 1 / 2 (target {targets['loop_over_bare']}) | scaling 1 -> 2, in-step / loop (target {targets['scaling']}) |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| bare loop | {overhead['bare']['tokens_per_s_1']:.0f} | {overhead['bare']['tokens_per_s_2']:.0f} | 1 | 1 | {overhead['bare']['scaling']:.2f} |",
    ]
    arms = [(name, overhead.get(name), "") for name in ("spark", "torch_distributor")]
    # the same bench on an earlier commit (overhead_before), for before and after: only from the same CPU
    before = before if before and before.get("machine", {}).get("cpu_model") == overhead.get("machine", {}).get("cpu_model") else None
    if before:
        arms += [(name, before.get(name), f" before ({before.get('commit', '?')})") for name in ("spark", "torch_distributor")]
    for name, row, when in arms:
        if row:
            lines.append(
                f"| `{name}`{when} | {row['in_step_tokens_per_s_1']:.0f} in-step, {row['loop_tokens_per_s_1']:.0f} loop | "
                f"{row['in_step_tokens_per_s_2']:.0f} in-step, {row['loop_tokens_per_s_2']:.0f} loop | "
                f"{_judged_pair(row['in_step_over_bare_1'], row['in_step_over_bare_2'], targets['in_step_over_bare'])} | "
                f"{_judged_pair(row['loop_over_bare_1'], row['loop_over_bare_2'], targets['loop_over_bare'])} | "
                f"{_judged_pair(row['in_step_scaling'], row['loop_scaling'], targets['scaling'])} |"
            )
    spread = [(name, overhead[name]) for name in ("spark", "torch_distributor") if name in overhead]
    if spread:
        each = "; ".join(f"`{name}` {', '.join(f'{v:.3f}' for v in row['in_step_scaling_per_block'])}" for name, row in spread)
        lines += [
            "",
            f"In-step scaling of each 2-rank block, in order: {each}; bare "
            f"{', '.join(f'{v:.3f}' for v in overhead['bare']['scaling_per_block'])}. The median is only as good as that spread.",
        ]
    if before:
        lines += [
            "",
            f"The rows marked before ({before.get('commit', '?')}) are an earlier run of the same bench, their ratios against that run's own bare loop "
            f"({before['bare']['tokens_per_s_1']:.0f} / {before['bare']['tokens_per_s_2']:.0f} tokens/s).",
        ]
    shares = [(name, ranks, overhead[name].get(f"loop_shares_{ranks}")) for name in ("spark", "torch_distributor") if name in overhead for ranks in (1, 2)]
    shares = [s for s in shares if s[2]]
    if shares:
        phases = list(shares[0][2])
        lines += ["", "Where rank 0's loop time went (summary.json `loop_seconds`, share of the loop's wall time):", ""]
        lines += ["| run | " + " | ".join(phases) + " |", "| --- |" + " --- |" * len(phases)]
        for name, ranks, row in shares:
            lines.append(f"| `{name}` x{ranks} | " + " | ".join(f"{row[p]:.1%}" for p in phases) + " |")
    return lines


BOOTSTRAP_PATHS = {
    "horovod_built_on_the_node": "Horovod, built on the node (no `emr.horovod_wheel_url`)",
    "horovod_prebuilt_wheel": "Horovod, prebuilt wheel",
    "torch_distributor": "TorchDistributor (`--without-horovod`)",
}


def _bootstrap_details(boot: dict | None) -> list[str]:
    if not boot:
        return []
    lines = [
        "",
        "### Node bootstrap by launcher (`bench/bootstrap_paths.py`)",
        "",
        "`emr/bootstrap.sh --local-test` into a fresh venv on this machine, one path after the other from the same pip cache "
        f"(load average {boot['load_before']} -> {boot['load_after']}); not an EMR measurement: a node also downloads what this cache holds.",
        "",
        "| path | seconds | builds horovod | Python packages | venv MB | system packages (dnf) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in boot["paths"].items():
        lines.append(
            f"| {BOOTSTRAP_PATHS.get(name, name)} | {row['seconds']:.0f} | {'yes' if row['built_horovod'] else 'no'} | {row['python_packages']} | "
            f"{row['venv_mb']:.0f} | {' '.join(row['system_packages'])} |"
        )
    return lines


def _serving_details(results: dict, serving: dict | None) -> list[str]:
    if not serving:
        return []
    m = serving["model"]
    return [
        "",
        "### Serving (`bench/serve_batching.py`)",
        "",
        f"{serving['size']} model with {m['weights']}, {m['parameters'] / 1e6:.2f}M parameters, {m['n_layer']} layers x {m['n_embd']}, "
        f"context {m['block_size']}, vocabulary {m['vocab_size']}; `serve --threads {serving['threads']}`; {serving['clients']} clients x "
        f"{serving['requests_per_client']} requests x {serving['max_tokens']} tokens on POST /v1/completions: "
        f"{serving['tokens_per_second_batched']:.0f} tokens/s with `--max-batch {serving['max_batch']}` (mean batch {serving['mean_batch']:.1f}), "
        f"{serving['tokens_per_second_one_at_a_time']:.0f} with `--max-batch 1`; ratio {serving['ratio']:.2f} ({_runs(_repeats(results, serving))}); "
        f"same texts from both: {serving['same_texts']}; load average {serving['load_before']} -> {serving['load_after']}.",
    ]


# `make demo`'s seconds outside its training loop (whose budget the loop keeps): issue 28's target.
DEMO_OUTSIDE_TARGET_S = 25.0


def _demo_verdict(outside_s: float) -> str:
    return "met" if outside_s < DEMO_OUTSIDE_TARGET_S else "**missed**"


def _e2e_runs(e2e: dict) -> str:
    """How many runs an end_to_end figure comes from (results before --repeats: one)."""
    seconds = e2e.get("outside_loop_s_runs")
    if not seconds or len(seconds) == 1:
        return "1 run"
    return f"median of {len(seconds)} runs: {', '.join(f'{s:.1f}' for s in seconds)} s outside the loop"


def _e2e_details(e2e: dict | None, before: dict | None = None) -> list[str]:
    if not e2e:
        return []
    # the same bench on the code before a change (end_to_end_before), only on the same machine
    before = before if before and before["machine"]["cpu_model"] == e2e["machine"]["cpu_model"] else None
    outside = outside_loop_s(e2e)
    rows = [*stage_rows(e2e), ("**total**", e2e["wall_s"]), ("**outside the training loop**", outside)]
    runs = _e2e_runs(e2e) + (
        f"; beside it, on the same machine, the code before issue 28's rank start-up and wrap-up change ({_e2e_runs(before)})" if before else ""
    )
    lines = ["", "### End to end (`bench/end_to_end.py`)", "", f"`{e2e['command']}`, {runs}, on an {e2e['machine']['cpu_model']}{_flags(e2e['machine'])}.", ""]
    if before:
        earlier = [*stage_rows(before), (None, before["wall_s"]), (None, outside_loop_s(before))]
        lines += ["| stage | before | now |", "| --- | --- | --- |"]
        lines += [f"| {name} | {old:.1f} | {seconds:.1f} |" for (name, seconds), (_, old) in zip(rows, earlier, strict=True)]
    else:
        lines += ["| stage | seconds |", "| --- | --- |"]
        lines += [f"| {name} | {seconds:.1f} |" for name, seconds in rows]
    pre = ", ".join(f"{k} {v:.1f}" for k, v in e2e["preprocess_stages_s"].items())
    lines += [
        "",
        f"Outside the training loop: {outside:.1f} s (target < {DEMO_OUTSIDE_TARGET_S:.0f} s: {_demo_verdict(outside)}). "
        f"Preprocess stages (seconds): {pre}. Training: {e2e['training_tokens_per_s']:.0f} tokens/s, mean MFU {e2e['mfu_mean']:.2f}.",
    ]
    return lines


def _gpu_details(gpu: dict | None) -> list[str]:
    """bench/gpu_check.py on one CUDA GPU: a machine of its own, so nothing here compares
    with the CPU figures above."""
    if not gpu:
        return []
    env = gpu["environment"]
    lines = [
        "",
        "### One GPU (`bench/gpu_check.py`)",
        "",
        f"Measured {env['date']} on one {env['gpu']} ({env['memory_gib']} GiB, compute capability {'.'.join(map(str, env['capability']))}), "
        f"Python {env['python']}, torch {env['torch']} (CUDA {env['cuda']}, NCCL {env['nccl']}), world size 1 over NCCL; TF32 off. "
        f"A different machine from the figures above: compare these only with each other. {gpu['settings']['mfu']}. "
        f"Checks {'passed' if gpu['passed'] else 'FAILED: ' + '; '.join(gpu['failed'])}.",
        "",
        "| arm | model | batch | precision | compiled | tokens/s | MFU | loss start -> end | peak GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, arm in gpu["arms"].items():
        shape = arm["shape"]
        model = f"{shape['n_layer']} x {shape['n_embd']}, context {shape['block_size']}, vocabulary {shape['vocab_size']} ({arm['params'] / 1e6:.1f}M)"
        compiled = f"yes ({arm['compile_s']:.0f} s to compile)" if arm["compiled"] else "no"
        lines.append(
            f"| {name} | {model} | {arm['batch']} | {arm['dtype']} | {compiled} | {arm['tokens_per_s']:,.0f} | {arm['mfu']:.1%} | "
            f"{arm['loss_start']:.2f} -> {arm['loss_end']:.2f} | {arm['peak_memory_gib']} |"
        )
    point = gpu["checkpoint"]
    lines += [
        "",
        f"A {point['file_mb']:.0f} MB checkpoint written on the GPU and loaded on the CPU gives logits within {point['max_abs_diff']:.1e} "
        f"(tolerance {point['tolerance']:g}) of the GPU's; the all_reduce over NCCL summed right: {gpu['distributed']['allreduce_ok']}.",
    ]
    return lines


def _precision_details(precision: dict | None) -> list[str]:
    """bench/precision.py: fp32 against bf16 steps of each recipe row, on the CPU it ran on."""
    if not precision:
        return []
    m = precision["machine"]
    peaks = precision["peak_gflops"]
    lines = [
        "",
        "### fp32 and bf16 training steps (`bench/precision.py`)",
        "",
        f"Each model row of the recipe's rule, one process, {precision['threads']} torch thread(s), {precision['batch']} windows a step "
        f"(forward, backward, AdamW), the arms alternating step by step, on an {m['cpu_model']}{_flags(m)}. MFU against each precision's own "
        f"matmul peak ({peaks['fp32']:.0f} GFLOP/s fp32, {peaks['bf16']:.0f} bf16). `auto` chooses bf16 from a calibrated training step "
        f"{precision['min_speedup']:.2f}x as fast as fp32's.",
        "",
        "| budget up to | model | fp32 tokens/s | bf16 tokens/s | bf16 / fp32 | MFU fp32 | MFU bf16 | `auto` |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in precision["rows"]:
        budget = "any longer" if row["budget_up_to_s"] == float("inf") else f"{row['budget_up_to_s'] / 60:g} min"
        lines.append(
            f"| {budget} | {row['n_layer']} x {row['n_embd']}, context {row['block_size']}, vocabulary {row['vocab_size']} | "
            f"{row['fp32']['tokens_per_s']:,.0f} | {row['bf16']['tokens_per_s']:,.0f} | {row['bf16_over_fp32']:.2f} | "
            f"{row['fp32']['mfu']:.0%} | {row['bf16']['mfu']:.0%} | {row['auto']['chooses']} ({row['auto']['bf16_speedup']:.2f}x) |"
        )
    c = precision.get("compile")
    if c:
        lines += [
            "",
            f"`train.compile` on the first row, in {c['precision']}: {c['compile_s']:.0f} s of compilation, then {c['compiled_over_eager']:.2f}x "
            f"the eager step ({c['eager_step_s'] * 1000:.0f} ms eager, {c['compiled_step_s'] * 1000:.0f} ms compiled): off by default.",
        ]
    return lines


def _decode_block_details(blocks: dict | None) -> list[str]:
    if not blocks:
        return []
    lines = [
        "",
        "### Batch-invariant decoding (`bench/decode_blocks.py`)",
        "",
        f"`GPT.decode_step` in fixed blocks of {blocks['row_block']} rows (what `serve` runs) against one unpadded step over the whole "
        f"batch; random weights, vocabulary 1024, {blocks['threads']} torch thread(s), medians of {blocks['repeats']} x {blocks['steps']} steps.",
        "",
        "| model | rows | tokens/s in blocks | tokens/s unpadded | time, blocks / unpadded |",
        "| --- | --- | --- | --- | --- |",
    ]
    for size, entry in blocks["sizes"].items():
        m = entry["model"]
        for batch, row in entry["batches"].items():
            lines.append(
                f"| {size} ({m['n_layer']} x {m['n_embd']}, context {m['block_size']}) | {batch} | {row['tokens_per_s_blocks']:.0f} | "
                f"{row['tokens_per_s_unpadded']:.0f} | {row['blocks_over_unpadded_time']:.2f} |"
            )
    return lines
