"""robopolicy: robot imitation learning and vision-language-action policies.

Demonstrations (LeRobotDataset v3.0) -> policy (encoder + diffusion / flow / ACT head) ->
checkpoint (safetensors + JSON) -> evaluation in MuJoCo / robosuite -> deployment loop.
"""

__version__ = "0.1.0"
