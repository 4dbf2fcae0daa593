"""Simulation: gymnasium envs whose observation keys are LeRobot feature names, scripted experts."""
