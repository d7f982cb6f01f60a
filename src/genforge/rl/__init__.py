"""Reinforcement-learning fine-tuning of trained generators against reward functions.

- ``rewards.py``    reward functions (built-ins per modality, user functions by dotted path)
- ``oracle.py``     their weighted sum, the contract checks, oracle-call counting (PMO's rule)
- ``specs.py``      what RL knows per modality: prompt in the sample?, oracle key, diversity
- ``prompts.py``    --prompt / --prompt-file
- ``algorithms.py`` advantages, clipped policy loss, KL estimators, entropy: pure functions
- ``diversity.py``  guard rails: diversity per modality and REINVENT's diversity filter
- ``policy.py``     the RL subclass of a family, by its ``policy_kind`` (tokens; Gaussian steps: DDPO)
- ``finetune.py``   the rollout batch source and `genforge rl`
"""
