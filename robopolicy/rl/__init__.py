"""Online RL fine-tuning of flow and diffusion policies (`robopolicy finetune`).

  chain.py     the head's denoising chain with Gaussian transitions and exact likelihoods (ReinFlow / DPPO)
  vector.py    envs stepped a chunk at a time in worker processes, policy calls batched
  ppo.py       returns and advantages (GAE), the clipped PPO objective, the value network
  config.py    the typed `finetune` config
  finetune.py  the loop: rollouts -> PPO epochs -> evaluation -> atomic, resumable checkpoints
"""
