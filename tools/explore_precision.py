"""Why ``rans`` uses 8-bit probabilities: size and speed of the codec at other precisions, in the same run.

The kernels module is loaded again under another name with ``PROB_BITS`` (and ``MAX_FREQ``, kept at 3/4 of
the scale) replaced; everything else is the shipped code. Each precision encodes the same synthetic chunk
(N = 50, 2,048-position sequences) and decodes its records with the label checks, as a read does; the
precisions take turns, so drift in machine speed hits all alike. Fewer bits make the per-model slot table
smaller (2^bits bytes), so more of the tables a read touches stay in L1 cache, at some cost in size.

    python tools/explore_precision.py            # 128 sequences
    python tools/explore_precision.py --quick
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

from sparselabels import synthetic
from sparselabels.codecs import _rans_kernels as shipped
from sparselabels.codecs import rans
from sparselabels.codecs.base import ChunkInput


def kernels_at(bits: int, directory: Path):
    """The kernels module with ``bits``-bit probabilities (the shipped module itself at its own precision)."""
    if bits == shipped.PROB_BITS:
        return shipped
    source = Path(shipped.__file__).read_text()
    for old, new in ((f"PROB_BITS = {shipped.PROB_BITS}\n", f"PROB_BITS = {bits}\n"),
                     (f"MAX_FREQ = {shipped.MAX_FREQ}\n", f"MAX_FREQ = {3 << bits >> 2}\n"),
                     ("cache=True", "cache=False")):
        if old not in source:
            raise RuntimeError(f"cannot find {old!r} in {shipped.__file__}")
        source = source.replace(old, new)
    path = directory / f"kernels_{bits}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"kernels_{bits}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchlib.add_common_args(parser, "explore_precision")
    parser.add_argument("--sequences", type=int, default=128)
    parser.add_argument("--bits", default="10,9,8,7")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.quick:
        args.sequences, args.repeats = 4, 2
    ids, counts, indptr, lengths = synthetic.sample_labels(args.sequences, 2048, 50)
    sequences = synthetic.split_sequences(ids, counts, indptr, lengths)
    chunk = ChunkInput.from_sequences(sequences, "count", 128_256)
    positions = int(indptr.size - 1)
    setups = {}
    with tempfile.TemporaryDirectory() as tmp:
        for bits in (int(b) for b in args.bits.split(",")):
            module = kernels_at(bits, Path(tmp))
            rans.K = module  # RansCodec looks its kernels up at call time
            codec = rans.RansCodec()
            encoded = codec.encode_chunk(chunk)  # also compiles
            starts = [0, *encoded.record_sizes.cumsum().tolist()]
            records = [(encoded.records[starts[j] : starts[j + 1]], len(s[2]) - 1, len(s[0]))
                       for j, s in enumerate(sequences)]
            for record, t, m in records:  # compiles the decoder, and checks the round trip's label rules
                codec.decode(record, encoded.table, t, m, "count", vocab_size=128_256, rounds=50)
            setups[bits] = (module, codec, encoded, records)
        times = {bits: {"encode": [], "decode": []} for bits in setups}
        try:
            for _ in range(args.repeats):
                for bits, (module, codec, encoded, records) in setups.items():
                    rans.K = module
                    start = time.thread_time()
                    codec.encode_chunk(chunk)
                    times[bits]["encode"].append(time.thread_time() - start)
                    start = time.thread_time()
                    for record, t, m in records:
                        codec.decode(record, encoded.table, t, m, "count", vocab_size=128_256, rounds=50)
                    times[bits]["decode"].append(time.thread_time() - start)
        finally:
            rans.K = shipped
    rows = []
    for bits, (_, _, encoded, records) in setups.items():
        rows.append({
            "prob_bits": bits,
            "bytes_per_position": (encoded.records.size + encoded.table.size) / positions,
            "decode_us_per_sequence_min": min(times[bits]["decode"]) / len(records) * 1e6,
            "decode_us_per_sequence_median": statistics.median(times[bits]["decode"]) / len(records) * 1e6,
            "encode_Mpos_s_median": positions / statistics.median(times[bits]["encode"]) / 1e6,
        })
    base = next(r for r in rows if r["prob_bits"] == shipped.PROB_BITS) if shipped.PROB_BITS in setups else rows[0]
    for r in rows:
        r["decode_vs_shipped"] = r["decode_us_per_sequence_min"] / base["decode_us_per_sequence_min"]
    benchlib.print_table(rows, ["prob_bits", "bytes_per_position", "decode_us_per_sequence_min",
                                "decode_us_per_sequence_median", "decode_vs_shipped", "encode_Mpos_s_median"],
                         title=f"{args.sequences} x 2,048 positions, N=50, one chunk (records + table); thread CPU "
                               f"time, {args.repeats} turns; shipped precision {shipped.PROB_BITS} bits")
    benchlib.write_json(args.out, {"benchmark": "explore_precision", "sequences": args.sequences,
                                   "repeats": args.repeats, "shipped_prob_bits": shipped.PROB_BITS, "rows": rows})


if __name__ == "__main__":
    main()
