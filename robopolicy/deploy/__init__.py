"""Deployment: a fixed-rate control loop driving a robot with a policy, safely."""
