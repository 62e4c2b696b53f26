"""What the rewrite stage produces and the planner executes: a list of steps over named
tensors, free of ONNX and of input shapes. Weights are already folded (BatchNorm, Mul and
Add constants) and activations fused; a compiled plan file stores exactly this.

steps.py: the step kinds (each owns its reads, shape, description and plan-file codec)
and Program; epilogue.py: the activation a step applies; codec.py: checked access to
plan-file header fields."""
from .epilogue import (IDENTITY, RELU, RES_AFTER_ACT, RES_BEFORE_ACT, RES_NONE,
                       Activation)
from .steps import (STEP_KINDS, AddStep, AffineStep, ChainStep, ConvLayer, CopyStep,
                    Program, Step, _Mutable)
from .steps import MeanStep, ScaleStep, TransposeStep, channel_move

__all__ = ["Activation", "IDENTITY", "RELU", "RES_NONE", "RES_BEFORE_ACT", "RES_AFTER_ACT",
           "Step", "ChainStep", "AffineStep", "AddStep", "CopyStep", "ConvLayer",
           "Program", "STEP_KINDS", "TransposeStep", "MeanStep", "ScaleStep",
           "channel_move"]


from ..quant import steps as _quant_steps  # noqa: E402,F401  (registers the int8 kinds)
