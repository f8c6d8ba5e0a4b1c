"""Compile the fused norm kernels for NVIDIA GPUs on a machine without one; print the outcome as JSON.

Triton compiles down to the GPU's binary (PTX, then cubin with the ptxas it ships) without a device,
so type errors and constructs the compiler refuses show here, which Triton's interpreter (the
numerical tests) would let through. Run with TRITON_INTERPRET unset: under the interpreter the
kernels are not compilable objects. Each kernel is compiled for every input dtype, for contiguous
and channels_last tensors (the unit stride specialised to 1, as a launch does) and for each
architecture given (e.g. 80 90: A100, H100/H200). Also reported, for speed on the GPU: whether the
activation is read with vector loads (several elements per instruction), which a memory-bound kernel
needs, and each kernel's registers per thread and spilled bytes from Triton's own ptxas (``-v``): a
spill moves values through local memory, traffic a bandwidth-bound kernel cannot afford, and the
register count sets how many programs share a multiprocessor."""
import itertools
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

from sparkmim.sparse import masked_batchnorm_triton as kernels

KERNELS = ("_statistics_kernel", "_normalize_kernel", "_gradient_sums_kernel", "_input_gradient_kernel")
DTYPES = {"bf16": "fp32", "fp16": "fp32", "fp32": "fp32", "fp64": "fp64"}  # input -> accumulation
ACTIVATIONS = ("x_ptr", "grad_ptr", "out_ptr")  # pointers to tensors in the input's dtype


def source(kernel: triton.JITFunction, dtype: str, layout: str) -> ASTSource:
    """The kernel as a launch on a typical ResNet feature map specialises it: 16-byte aligned tensors,
    the unit stride a constant 1, the other strides, the positions and the channels multiples of 16."""
    accumulation = DTYPES[dtype]
    unit_stride = "position_stride" if layout == "contiguous" else "channel_stride"
    signature: Dict[str, str] = {}
    constants = {"BLOCK_L": 64, "BLOCK_C": 64, "WIDE": accumulation == "fp64"}
    for name in kernel.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = f"*{dtype}" if name in ACTIVATIONS else f"*{accumulation}"
        elif name.endswith(unit_stride):
            signature[name] = "constexpr"
            constants[name] = 1
        else:
            signature[name] = "i32"
    aligned = {(index,): [["tt.divisibility", 16]] for index, name in enumerate(kernel.arg_names)
               if signature[name] != "constexpr"}
    return ASTSource(fn=kernel, signature=signature, attrs=aligned,
                     constexprs={(kernel.arg_names.index(name),): value for name, value in constants.items()})


def resources(ptx: str, arch: int) -> Dict[str, Optional[int]]:
    """Registers per thread and spilled bytes (stores + loads) of the kernel in ``ptx``, as the ptxas
    that Triton uses for ``arch`` reports them (``None`` where it printed no figure)."""
    target = re.search(r"^\.target\s+(\S+)", ptx, flags=re.MULTILINE).group(1)  # sm_80, sm_90a
    with tempfile.TemporaryDirectory() as folder:
        kernel = Path(folder) / "kernel.ptx"
        kernel.write_text(ptx)
        report = subprocess.run([get_ptxas(arch).path, "-v", "--gpu-name", target, str(kernel),
                                 "-o", str(kernel.with_suffix(".cubin"))], capture_output=True, text=True).stderr
    registers = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    return {"registers": int(registers.group(1)) if registers else None,
            "spill_bytes": int(spills.group(1)) + int(spills.group(2)) if spills else None}


def main() -> None:
    outcomes, vector_loads, usage = {}, {}, {}
    architectures = [int(arch) for arch in sys.argv[1:]] or [90]
    for arch, name, dtype, layout in itertools.product(architectures, KERNELS, DTYPES, ("contiguous", "channels_last")):
        build = f"sm_{arch} {name} {dtype} {layout}"
        try:
            compiled = triton.compile(source(getattr(kernels, name), dtype, layout), target=GPUTarget("cuda", arch, 32))
            outcome = "ok" if compiled.asm.get("cubin") else "no cubin"
            vector_loads[build] = "ld.global.v" in compiled.asm["ptx"]
            usage[build] = resources(compiled.asm["ptx"], arch)
        except Exception as error:  # report every failure, not only the first, by its root cause
            while error.__cause__ is not None:  # a CompilationError chains the call sites down to the cause
                error = error.__cause__
            outcome = f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:300]}"
        outcomes[build] = outcome
    print(json.dumps({"outcomes": outcomes, "vector_loads": vector_loads, "resources": usage}))


if __name__ == "__main__":
    main()
