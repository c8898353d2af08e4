"""Print the documentation's benchmark tables as Markdown, from the JSON the benchmarks wrote to tools/results/.

The docs quote only measured numbers. Each table lives in one file (``DOCS``: a page of docs/, or the README for
its headline numbers) between ``<!-- table: NAME -->`` and ``<!-- /table -->``; regenerating it from the JSON
keeps it in step:

    python tools/readme_tables.py codec     # or: io, loader, fidelity, fuzz, sampler, loss, generate, goals,
                                            #     headline, remote
    python tools/readme_tables.py --write   # rewrite every table in place in its docs/ file
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "tools" / "results"


def _load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _when(d: dict) -> str:
    m = d["machine"]
    gpu = f"{m['gpu']} (torch {m.get('torch')}, triton {m.get('triton')}), " if m.get("gpu") else ""
    return f"{m['date'][:10]}, {gpu}{m['cpu']}, {m['cores']} cores"


def codec() -> str:
    d = _load("bench_codec")
    lines = [f"<!-- tools/results/bench_codec.json: {_when(d)} -->",
             "| method | bytes/position (whole file) | vs raw | encode M pos/s | decode M pos/s "
             "| one random sequence, warm | cold |", "|---|---|---|---|---|---|---|"]
    names = {"raw": "raw", "rans": "**rans**", "paper-3B": "paper's 3 bytes per label (computed, no index)",
             "zstd-3": "zstd level 3 over the raw arrays, per 16 MiB chunk", "zstd-19": "zstd level 19, likewise"}
    for r in d["rows"]:
        warm = cold = "-"
        if "random_read_warm_us" in r:
            warm = f"{r['random_read_warm_us']:.0f} us"
            cold = f"{r['random_read_cold_us']:.0f} us"
            if r["method"] != "raw":  # ratio of the medians; median of the back-to-back per-sequence ratios
                warm += f" ({r['random_read_warm_vs_raw']:.2f}x raw; paired {r['random_read_warm_pair_ratio']:.2f}x)"
                cold += f" ({r['random_read_cold_vs_raw']:.2f}x raw; paired {r['random_read_cold_pair_ratio']:.2f}x)"
        elif r["method"].startswith("zstd"):
            warm = "whole chunk"
        enc = f"{r['encode_Mpos_s']:.3g}" if "encode_Mpos_s" in r else "-"
        dec = f"{r['decode_Mpos_s']:.3g}" if "decode_Mpos_s" in r else "-"
        lines.append(f"| {names.get(r['method'], r['method'])} | {r['bytes_per_position']:.2f} | "
                     f"{r['size_vs_raw']:.2f} | {enc} | {dec} | {warm} | {cold} |")
    return "\n".join(lines)


def loader() -> str:
    d = _load("bench_loader")
    base, careful = d["baseline"], d["careful_baseline"]["positions_per_s"]
    lines = [f"<!-- tools/results/bench_loader.json: {_when(d)} -->",
             "| reader | layout | positions/s | x careful HF datasets | x nested HF datasets | bytes/batch | "
             "CPU ms/batch (with workers: the main process's) |",
             "|---|---|---|---|---|---|---|"]
    for mode, key in (("1 process", "single_process"), ("2 DataLoader workers", "workers")):
        for name in ("raw", "rans"):
            for layout in ("csr", "padded"):
                c = d["codecs"][name]["layouts"][layout]
                rate = c[key]["positions_per_s"]
                cpu_s = c[key].get("median_batch_cpu_s", c[key].get("main_process_cpu_s_per_batch"))
                cpu = f"{1e3 * cpu_s:.2f}" if cpu_s is not None else ""
                lines.append(f"| sparselabels {name}, {mode} | {layout} | {rate / 1e6:.2f} M | {rate / careful:.1f} | "
                             f"{rate / base['positions_per_s']:.0f} | {c['batch_bytes'] / 1e6:.1f} MB | {cpu} |")
    numpy_format = base["variants"]["numpy format"]["positions_per_s"]
    lines.append(f"| HF datasets, one row per sequence, flat arrays + indptr, numpy, vectorised padding | padded | "
                 f"{careful / 1e6:.2f} M | 1 | {careful / base['positions_per_s']:.0f} | | |")
    lines.append(f"| HF datasets, nested lists, Python rows (numpy format: {numpy_format / 1e3:.1f} K) | padded | "
                 f"{base['positions_per_s'] / 1e3:.0f} K | {base['positions_per_s'] / careful:.2f} | 1 | | |")
    return "\n".join(lines)


def io() -> str:
    d = _load("bench_io")
    lib, npy = d["rows"]
    lines = [f"<!-- tools/results/bench_io.json: {_when(d)} -->",
             "| | bytes/position | write M pos/s | write MB/s | random read M pos/s | random read, cold |",
             "|---|---|---|---|---|---|",
             f"| sparselabels raw (validated, CRC-checked, fsynced) | {lib['bytes/pos']:.1f} | "
             f"{lib['write Mpos/s']:.2f} | {lib['write MB/s']:.0f} | {lib['read rand Mpos/s']:.1f} | "
             f"{lib['read rand cold Mpos/s']:.1f} |",
             f"| sparselabels raw, reads without checks (`read(i, check=False)`) | | | | "
             f"{lib['read rand unchecked Mpos/s']:.1f} | |",
             f"| np.save / np.load(mmap) slicing (no checks at all) | {npy['bytes/pos']:.1f} | "
             f"{npy['write Mpos/s']:.2f} | {npy['write MB/s']:.0f} | {npy['read rand Mpos/s']:.1f} | "
             f"{npy['read rand cold Mpos/s']:.1f} |"]
    return "\n".join(lines)


def fidelity() -> str:
    d = _load("gradient_fidelity")
    lines = [f"<!-- tools/results/gradient_fidelity.json: {_when(d)} -->",
             "| method | labels/position | angle to full KD | norm ratio | paper |", "|---|---|---|---|---|"]
    for r in d["results"]:
        if "ghost" in r["method"]:
            continue
        paper = f"{r['paper_angle']:.0f} deg, {r['paper_ratio']}" if r["paper_angle"] != "" else "-"
        lines.append(f"| {r['method']} | {r['labels/pos']:.1f} | {r['angle_deg']:.1f} +- {r['angle_std']:.1f} deg | "
                     f"{r['norm_ratio']:.3f} | {paper} |")
    return "\n".join(lines)


def fuzz() -> str:
    d = _load("fuzz_format")
    outcomes = ["identical", "valid-different", "rejected-open", "rejected-read", "rejected-validate"]
    bugs = ["crash", "hang", "memory", "wrong-exception", "inconsistent", "spread"]
    lines = [f"<!-- tools/results/fuzz_format.json: {_when(d)} -->",
             "| mutation | codec | " + " | ".join(outcomes) + " | bugs (" + ", ".join(bugs) + ") |",
             "|---|---|" + "---|" * (len(outcomes) + 1)]
    mutations = list(next(iter(d["table"].values())))
    totals: dict[str, dict[str, int]] = {}
    for mutation in mutations:
        for codec_name, table in sorted(d["table"].items()):
            counts = table.get(mutation, {})
            total = totals.setdefault(codec_name, {})
            for key, value in counts.items():
                total[key] = total.get(key, 0) + value
            cells = [f"{counts.get(o, 0):,}" for o in outcomes]
            lines.append(f"| {mutation} | {codec_name} | " + " | ".join(cells) +
                         f" | {sum(counts.get(b, 0) for b in bugs)} |")
    for codec_name, total in sorted(totals.items()):
        cells = [f"**{total.get(o, 0):,}**" for o in outcomes]
        lines.append(f"| **total** | **{codec_name}** | " + " | ".join(cells) +
                     f" | **{sum(total.get(b, 0) for b in bugs)}** |")
    silent = "; ".join(
        f"{c} {sum(v.values())} (" + ", ".join(f"{m} {n}" for m, n in sorted(v.items())) + ")"
        for c, v in sorted(d["silent_at_default_verify"].items())
    ) or "none"
    lines.append("")
    mutants = d["cases_per_codec"] * len(d["codecs"])
    lines.append(f"{mutants:,} mutants in {d['seconds']:.0f} s; mutants that read back other content at the "
                 f"default verify level (caught by validate): {silent}.")
    return "\n".join(lines)


def sampler() -> str:
    d = _load("bench_sampler")
    lines = [f"<!-- tools/results/bench_sampler.json: {_when(d)} -->",
             "| V | dtype | read once (`amax`) | kernel | `sample_counts` (all) | softmax + multinomial "
             "| kernel / read | multinomial / kernel | labels/row | to host | `LabelWriter.write` |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["results"]:
        lines.append(
            f"| {r['vocab']:,} | {r['dtype']} | {r['read_once_ms']:.3f} ms | {r['kernel_ms']:.3f} ms | "
            f"{r['sample_counts_ms']:.3f} ms | {r['softmax_multinomial_ms']:.2f} ms | {r['kernel_over_read']:.2f}x | "
            f"{r['speedup_kernel']:.1f}x | {r['labels_per_row']:.1f} | {r['to_host_ms']:.2f} ms | "
            f"{r['write_ms']:.2f} ms |")
    if d.get("sweep"):
        read_ms = d["sweep"][0]["read_once_ms"]
        lines += ["", f"Kernel configurations at V = 128,256 bf16 (same run; read once {read_ms:.3f} ms):",
                  "", "| pass 1 | sampling-kernel warps | pass-2 batch | block | kernel | kernel / read |",
                  "|---|---|---|---|---|---|"]
        for r in d["sweep"]:
            c = r["config"]
            timing = f"{r.get('error', 'failed')} | -"
            if "kernel_ms" in r:
                timing = f"{r['kernel_ms']:.3f} ms | {r['kernel_over_read']:.2f}x"
            lines.append(f"| {'own kernel' if c['split'] else 'in the sampling kernel'} | {c['num_warps']} | "
                         f"{c['batch']} | {c['block']:,} | {timing} |")
    return "\n".join(lines)


def loss() -> str:
    d = _load("bench_loss")
    c = d["config"]
    lines = [f"<!-- tools/results/bench_loss.json: {_when(d)}; T={c['tokens']:,}, H={c['hidden']:,}, "
             f"V={c['vocab']:,}, {c['dtype']} -->",
             "| forward + backward | ms | time x cross-entropy | peak extra GiB | memory x cross-entropy |",
             "|---|---|---|---|---|"]
    for r in d["results"]:
        if "ms" not in r:  # a case that failed (out of memory, say) is shown with its error
            lines.append(f"| `{r['case']}` | {r.get('error', 'failed')} | - | - | - |")
            continue
        lines.append(f"| `{r['case']}` | {r['ms']:.1f} | {r['time_vs_ce']:.2f} | {r['peak_extra_gib']:.2f} | "
                     f"{r['memory_vs_ce']:.2f} |")
    return "\n".join(lines)


def generate() -> str:
    d = _load("bench_generate")
    c, med, t = d["config"], d["medians_s"], d["tokens_per_s"]
    forward = med["forward"]
    lines = [f"<!-- tools/results/bench_generate.json: {_when(d)}; {c['params'] / 1e9:.2f}B-parameter teacher, "
             f"batch {c['batch_size']} x {c['seq_len']:,} -->",
             "| per batch | ms | % of forward |", "|---|---|---|"]
    for key, name in (("forward", "teacher forward (baseline)"), ("sampling", "`sample_counts`"),
                      ("d2h", "labels to host"), ("write", "`LabelWriter.write` + fsync (inline)"),
                      ("multinomial", "softmax + `torch.multinomial` (naive sampler)")):
        lines.append(f"| {name} | {1e3 * med[key]:.1f} | {100 * med[key] / forward:.1f} |")
    lines += ["", "| end to end | tokens/s | overhead vs forward only |", "|---|---|---|",
              f"| forward passes only (baseline) | {t['forward_only']:,.0f} | - |",
              f"| `generate` (writes on a background thread) | {t['end_to_end']:,.0f} | "
              f"{d['overhead_pct']['end_to_end']:.1f}% |",
              f"| `generate`, writes inline | {t['end_to_end_inline_writes']:,.0f} | "
              f"{100 * (t['forward_only'] / t['end_to_end_inline_writes'] - 1):.1f}% |"]
    return "\n".join(lines)


def goals() -> str:
    """Every goal a benchmark's JSON records, and whether that run met it."""
    rows = []
    loader = _load("bench_loader")
    rows += [("loader", name, goal["met"], loader) for name, goal in loader["goals"].items()]
    sampler = _load("bench_sampler")
    rows += [("sampler", f"{name} (V = 128,256, bf16)", ok, sampler) for name, ok in sampler["targets"].items()]
    loss = _load("bench_loss")
    rows += [("fused loss", name, ok, loss) for name, ok in loss["targets"].items()]
    gen = _load("bench_generate")
    pct = gen["overhead_pct"]
    rows.append(("labeling", f"end-to-end overhead <= {pct['goal']:g}% of forward (measured {pct['end_to_end']:.1f}%)",
                 pct["end_to_end"] <= pct["goal"], gen))
    lines = ["<!-- goals from tools/results/{bench_loader,bench_sampler,bench_loss,bench_generate}.json -->",
             "| benchmark | goal (as the JSON records it) | met | run |", "|---|---|---|---|"]
    for bench, name, ok, d in rows:
        m = d["machine"]
        run = f"{m['date'][:10]}, {m.get('gpu') or m['cpu']}"
        lines.append(f"| {bench} | `{name}` | {'yes' if ok else '**no**'} | {run} |")
    return "\n".join(lines)


def headline() -> str:
    """The README's few numbers, each linked to the table it comes from."""
    codec_rows = {r["method"]: r for r in _load("bench_codec")["rows"]}
    csr = {name: c["layouts"]["csr"] for name, c in _load("bench_loader")["codecs"].items() if "layouts" in c}
    remote = _load("bench_remote")
    sampler = next(r for r in _load("bench_sampler")["results"] if r["vocab"] == 128256 and r["dtype"] == "bf16")
    loss = next(r for r in _load("bench_loss")["results"] if r["case"] == "sparse_kd_fused")
    gen = _load("bench_generate")
    fid = {r["method"]: r for r in _load("gradient_fidelity")["results"]}
    fz = _load("fuzz_format")
    bugs = sum(n for table in fz["table"].values() for counts in table.values() for k, n in counts.items()
               if k in ("crash", "hang", "memory", "wrong-exception", "inconsistent", "spread"))
    perf = "docs/performance.md"
    rows = [
        ("label bytes per position, RS-KD N = 50 (`rans`)",
         f"{codec_rows['rans']['bytes_per_position']:.1f} (`raw` {codec_rows['raw']['bytes_per_position']:.1f}; "
         f"paper's 3-byte packing {codec_rows['paper-3B']['bytes_per_position']:.1f})", f"{perf}#codecs"),
        ("CSR batches of 16 x 2,048, one CPU process (every CRC and label rule checked)",
         f"{csr['rans']['single_process']['positions_per_s'] / 1e6:.1f}-"
         f"{csr['raw']['single_process']['positions_per_s'] / 1e6:.1f} M positions/s, "
         f"{csr['rans']['ratio_single_vs_careful']:.1f}-{csr['raw']['ratio_single_vs_careful']:.1f}x a careful "
         "HF `datasets` layout", f"{perf}#data-loading"),
        ("object storage, 20 ms per request",
         f"{remote['goals']['pipelined_positions_per_s']['value'] / 1e6:.2f} M positions/s; a cached epoch "
         f"{remote['goals']['cached_epoch_vs_local']['value']:.2f}x local reads", "docs/remote.md"),
        ("GPU sampler vs softmax + `torch.multinomial` (V = 128,256, bf16)",
         f"{sampler['speedup_kernel']:.1f}x faster; {sampler['kernel_over_read']:.2f}x one read of the logits",
         f"{perf}#sampler-gpu"),
        ("fused KD loss vs cross-entropy (V = 128,256)",
         f"{loss['time_vs_ce']:.2f}x the time, {loss['memory_vs_ce']:.2f}x the peak memory", f"{perf}#fused-loss-gpu"),
        ("labeling overhead over the teacher's forward passes",
         f"{gen['overhead_pct']['end_to_end']:.1f}% ({gen['config']['params'] / 1e9:.2f}B teacher)",
         f"{perf}#labeling-gpu"),
        ("student gradient's angle to full KD",
         f"RS-KD {fid['RS-KD (N=50)']['angle_deg']:.1f} deg, Top-K 12 {fid['Top-K 12']['angle_deg']:.1f} deg",
         f"{perf}#gradient-fidelity"),
        ("fuzzed corrupt files", f"{fz['cases_per_codec'] * len(fz['codecs']):,} mutants, {bugs} crashes, hangs, "
         "memory blow-ups or wrong results", "docs/reliability.md#fuzzing-the-format"),
    ]
    lines = ["| | measured | details |", "|---|---|---|"]
    lines += [f"| {what} | {value} | [table]({link}) |" for what, value, link in rows]
    return "\n".join(lines)


def remote() -> str:
    d = _load("bench_remote")
    lines = [f"<!-- tools/results/bench_remote.json: {_when(d)}; {d['sequences']:,} x {d['seq_len']:,} positions in "
             f"{d['shards']} shards, batches of {d['batch']}, {1e3 * d['latency_s']:.0f} ms added per request -->",
             "| read path | positions/s | requests |", "|---|---|---|"]
    for r in d["rows"]:
        lines.append(f"| {r['mode']} | {r['positions_per_s']:,.0f} | {r.get('requests', '-')} |")
    return "\n".join(lines)


TABLES = {"codec": codec, "loader": loader, "io": io, "fidelity": fidelity, "fuzz": fuzz, "sampler": sampler,
          "loss": loss, "generate": generate, "goals": goals, "headline": headline, "remote": remote}
#: The docs/ file that holds each table.
DOCS = {name: ROOT / "docs" / ("reliability.md" if name == "fuzz" else "performance.md") for name in TABLES}
DOCS["headline"] = ROOT / "README.md"
DOCS["remote"] = ROOT / "docs" / "remote.md"


def block(name: str) -> str:
    """A table as it stands in its document, between its markers."""
    return f"<!-- table: {name} -->\n{TABLES[name]()}\n<!-- /table -->"


def write(name: str) -> bool:
    """Replace table ``name`` in its document with what the JSON gives; True if the text changed."""
    path = DOCS[name]
    text = path.read_text()
    pattern = re.compile(rf"<!-- table: {re.escape(name)} -->\n.*?<!-- /table -->", re.S)
    if len(pattern.findall(text)) != 1:
        raise SystemExit(f"{path}: expected one '<!-- table: {name} -->' ... '<!-- /table -->' block")
    new = pattern.sub(lambda _: block(name), text)
    path.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", nargs="?", choices=sorted(TABLES))
    parser.add_argument("--write", action="store_true", help="rewrite the table (all tables without a name) in "
                        "its docs/ file")
    args = parser.parse_args(argv)
    if not args.write:
        if args.table is None:
            parser.error("name a table, or pass --write")
        print(TABLES[args.table]())
        return 0
    for name in [args.table] if args.table else sorted(TABLES):
        changed = write(name)
        print(f"{DOCS[name].relative_to(ROOT)}: {name} {'updated' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
