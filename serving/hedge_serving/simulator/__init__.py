"""vLLM engine simulator: speaks vLLM's OpenAI API and /metrics without a GPU.

Start one in-process with `start_simulator(SimulatorConfig(...), "127.0.0.1", 0)`, or from a
real vLLM command line with `SimulatorConfig.from_vllm_args(args, annotations)`; from a shell,
`hedge simulator --model NAME`.
"""

from hedge_serving.simulator.config import (
    ANNOTATION_KNOBS,
    ANNOTATION_PREFIX,
    Faults,
    SimulatorConfig,
)
from hedge_serving.simulator.server import RunningSimulator, build_app, start_simulator

__all__ = [
    "ANNOTATION_KNOBS",
    "ANNOTATION_PREFIX",
    "Faults",
    "RunningSimulator",
    "SimulatorConfig",
    "build_app",
    "start_simulator",
]
