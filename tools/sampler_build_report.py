"""What the compiler makes of the sampling kernel for a Hopper GPU (sm_90), on a machine without a GPU.

For each benchmark geometry (V in {32,000, 128,256, 262,144} x {bf16, fp32}, default config, 50 rounds), with pass 1
as its own kernel (the default, ``split``) and inside the sampling kernel: compile time, registers per thread,
local memory and stack (spills), shared memory, whether pass 1 is software-pipelined (``cp.async`` in the PTX;
one-kernel mode only), and the programs per multiprocessor that registers, shared memory and threads allow (the
persistent grid's width). It checks a configuration before any GPU time; the default itself was then chosen on an
H200 by ``tools/bench_sampler.py``'s sweep (4 warps, <= 128 registers: 4 programs per SM).

Registers come from ``cuobjdump --dump-resource-usage`` of Triton's own cubin (the tool ships in triton's NVIDIA
backend). ``TRITON_INTERPRET`` is cleared before triton is imported: the interpreter cannot compile.

    python tools/sampler_build_report.py           # all six geometries (~1 minute)
    python tools/sampler_build_report.py --quick   # V = 128,256 bf16 only
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import add_common_args, print_table, write_json

from sparselabels.sampling.triton_kernel import compile_offline, default_config

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
REGISTERS_PER_SM = 65536  # Hopper
SHARED_PER_SM = 227 * 1024  # Hopper, usable by one block
THREADS_PER_SM = 2048


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG, STACK, LOCAL and SHARED of the kernel, as cuobjdump reports them."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"sampler_{os.getpid()}.cubin"
    path.write_bytes(cubin)
    try:
        command = [str(tool), "--dump-resource-usage", str(path)]
        out = subprocess.run(command, capture_output=True, text=True, check=True)
    finally:
        path.unlink(missing_ok=True)
    line = next(line for line in out.stdout.splitlines() if "REG:" in line)
    return {key: int(value) for key, value in re.findall(r"(REG|STACK|LOCAL|SHARED):(\d+)", line)}


def report(vocab: int, dtype_name: str, rounds: int = 50, split: bool | None = None) -> dict:
    """The default configuration, or it with ``split`` set (False: pass 1 inside the sampling kernel)."""
    dtype = DTYPES[dtype_name]
    config = default_config(vocab, torch.empty(0, dtype=dtype).element_size())
    if split is not None:
        config = dataclasses.replace(config, split=split)
    start = time.perf_counter()
    compiled = compile_offline(vocab, dtype, rounds=rounds, config=config)
    seconds = time.perf_counter() - start
    usage = resource_usage(compiled.asm["cubin"])
    pass1 = None
    if config.split:  # split mode's pass-1 kernel compiles too
        pass1 = resource_usage(compile_offline(vocab, dtype, config=config, kernel="stats").asm["cubin"])["REG"]
    shared = compiled.metadata.shared
    threads = config.num_warps * 32
    programs = min(
        REGISTERS_PER_SM // (usage["REG"] * threads), SHARED_PER_SM // max(1, shared), THREADS_PER_SM // threads
    )
    return {
        "vocab": vocab,
        "dtype": dtype_name,
        "rounds": rounds,
        "sub": config.sub,
        "block": config.block,
        "batch": config.batch,
        "num_warps": config.num_warps,
        "pipeline": config.pipeline,
        "split": config.split,
        "compile_s": seconds,
        "registers": usage["REG"],
        "local_bytes": usage["LOCAL"],
        "stack_bytes": usage["STACK"],
        "shared_bytes": shared,
        "cp_async": compiled.asm["ptx"].count("cp.async.cg"),
        "pass1_registers": pass1,
        "programs_per_sm": programs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, "sampler_build_report")
    args = parser.parse_args()
    cases = [(128256, "bf16")] if args.quick else [(v, d) for v in (32000, 128256, 262144) for d in DTYPES]
    rows = [report(vocab, dtype, split=split) for vocab, dtype in cases for split in (True, False)]
    columns = ["vocab", "dtype", "split", "sub", "block", "compile_s", "registers", "local_bytes", "shared_bytes"]
    columns += ["stack_bytes", "cp_async", "programs_per_sm", "pass1_registers"]
    print_table(rows, columns, title="sampling kernel (and split mode's pass-1 kernel), compiled for sm_90")
    write_json(args.out, {"target": "cuda sm_90 (compiled offline)", "results": rows})


if __name__ == "__main__":
    main()
