"""Print the README's benchmark tables as Markdown, from the JSON the benchmarks wrote to tools/results/.

The README quotes only measured numbers; regenerating its tables from the JSON keeps them in step:

    python tools/readme_tables.py codec     # or: io, loader, fidelity, fuzz, sampler, loss, generate
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


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
             "| reader | layout | positions/s | x careful HF datasets | x nested HF datasets | bytes/batch |",
             "|---|---|---|---|---|---|"]
    for mode, key in (("1 process", "single_process"), ("2 DataLoader workers", "workers")):
        for name in ("raw", "rans"):
            for layout in ("csr", "padded"):
                c = d["codecs"][name]["layouts"][layout]
                rate = c[key]["positions_per_s"]
                lines.append(f"| sparselabels {name}, {mode} | {layout} | {rate / 1e6:.2f} M | {rate / careful:.1f} | "
                             f"{rate / base['positions_per_s']:.0f} | {c['batch_bytes'] / 1e6:.1f} MB |")
    numpy_format = base["variants"]["numpy format"]["positions_per_s"]
    lines.append(f"| HF datasets, one row per sequence, flat arrays + indptr, numpy, vectorised padding | padded | "
                 f"{careful / 1e6:.2f} M | 1 | {careful / base['positions_per_s']:.0f} | |")
    lines.append(f"| HF datasets, nested lists, Python rows (numpy format: {numpy_format / 1e3:.1f} K) | padded | "
                 f"{base['positions_per_s'] / 1e3:.0f} K | {base['positions_per_s'] / careful:.2f} | 1 | |")
    met = [f"{name}: {'met' if g['met'] else 'NOT met'} ({g['value']:.3g})" for name, g in d["goals"].items()
           if name.startswith("csr")]
    lines.append("")
    lines.append("Goals (CSR): " + "; ".join(met) + ".")
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


TABLES = {"codec": codec, "loader": loader, "io": io, "fidelity": fidelity, "fuzz": fuzz, "sampler": sampler,
          "loss": loss, "generate": generate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=sorted(TABLES))
    args = parser.parse_args(argv)
    print(TABLES[args.table]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
