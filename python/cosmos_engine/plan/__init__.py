"""Planning a run before anything is loaded: memory per rank, time, and what to change (`cosmos-engine plan`)."""

from __future__ import annotations

import logging

from cosmos_engine.plan.plan import Plan, check_arguments, make_plan, read_cache_state
from cosmos_engine.plan.rates import DEVICE_NAMES, GPU_NAMES

log = logging.getLogger(__name__)

__all__ = ["DEVICE_NAMES", "GPU_NAMES", "Plan", "check_arguments", "make_plan", "read_cache_state", "announce",
           "local_device_name", "encode_seconds_per_window"]


def local_device_name() -> tuple[str, int]:
    """(the plan table's name for this process's device, its memory in bytes). A GPU the table does not list
    is planned with the H100 SXM rates; its own memory is what the warning compares with."""
    import torch

    from cosmos_engine.plan.rates import host_memory_bytes

    if not torch.cuda.is_available():
        return "cpu", host_memory_bytes()
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    name = props.name.upper()
    known = [("H100" in name and "PCIE" in name, "h100-pcie"), ("H100" in name, "h100-sxm"), ("H200" in name, "h200"),
             ("A100" in name and props.total_memory > 50 * 2**30, "a100-80g"), ("A100" in name, "a100-40g"),
             ("L40S" in name, "l40s"), ("B200" in name, "b200"), ("4090" in name, "rtx4090"), ("5090" in name, "rtx5090")]
    return next((table for hit, table in known if hit), "h100-sxm"), props.total_memory


def encode_seconds_per_window(flavor: str, frames: int, height: int, width: int, device_name: str) -> tuple[float, str]:
    """(seconds, how they were estimated) for the VAE to encode one training window on `device_name`: the
    encoder's FLOPs (`wan_vae.encode_flops`) at the device's GEMM rate, which convolutions reach at best, so
    this is a lower bound (what the cache build states before it encodes anything)."""
    from cosmos_engine.models.flavors import vae_config
    from cosmos_engine.models.wan_vae import encode_flops
    from cosmos_engine.plan.rates import device

    flops = encode_flops(vae_config(flavor), frames, height, width)
    rate = device(device_name).gemm
    return flops / rate.value, (f"{flops / 1e12:.3g} TFLOP per window at {rate.value / 1e12:.3g} TFLOP/s, the "
                                f"{device_name} GEMM rate ({rate.source}); a lower bound")


def announce(recipe, job: str) -> Plan | None:
    """For `run` and `infer`: print the plan's one-line summary for this process's device and world size
    (the log), and warn when the device has less memory than the plan predicts. Never raises: a plan that
    cannot be made is a warning, not a reason to stop the run."""
    import os

    try:
        name, memory = local_device_name()
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        gpus, nodes = (local, max(world // max(local, 1), 1)) if name != "cpu" else (1, 1)
        plan = make_plan(recipe, job, name, gpus, nodes, advise=False)
    except Exception as exc:  # noqa: BLE001 - the plan is advice; the run goes on without it
        log.warning("no plan for this run: %s", exc)
        return None
    log.info("%s", plan.summary())
    peak = plan.host_bytes if name == "cpu" else plan.peak_bytes
    if memory < peak:
        log.warning("this device has %.1f GiB but the plan predicts a peak of %.1f GiB per rank; see "
                    "`cosmos-engine plan` for what to change", memory / 2**30, peak / 2**30)
    return plan
